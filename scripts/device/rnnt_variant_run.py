"""Run the RNN-T CUDA tests and benchmarks/rnnt.py with rnnt_triton's band settings from a JSON
file (what scripts/device/rnnt_debug.py chose):

    python scripts/device/rnnt_variant_run.py VARIANT.json [RNNT BENCH ARGS...]
"""

import json
import sys
from pathlib import Path

import pytest

from mamba_asr.ops import rnnt_triton as rt

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "benchmarks"))
for k, v in json.loads(Path(sys.argv[1]).read_text()).items():
    setattr(rt, k, v)
print(
    "# rnnt_triton band settings:",
    {k: getattr(rt, k) for k in ("BAND_MIN_BLOCK", "BAND_STAGES", "BAND_SHIFT")},
)
pytest.main(
    ["-q", "-p", "no:cacheprovider", str(root / "tests/ops/test_rnnt_triton.py"), "-m", "cuda"]
)
import rnnt  # noqa: E402

rnnt.main(["--device", "cuda", "--impls", "ours", "torchaudio", "pruned", "--rnnt-backend", "triton",
           "--repeats", "20", *sys.argv[2:]])  # fmt: skip
