"""One forward+backward of the Triton selective scan per dtype at B8 D1024 L2048 (anchors' inputs),
for Nsight Compute:  ncu --clock-control none -k regex:_bwd python3 scripts/device/scan_ncu.py"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mamba_asr.ops.selective_scan import selective_scan_fn  # noqa: E402
from scan_cuda import make_inputs  # noqa: E402

for name in sys.argv[1:] or ["float32", "bfloat16"]:
    x = make_inputs(8, 1024, 2048, getattr(torch, name))
    for _ in range(2):
        out = selective_scan_fn(**x, delta_softplus=True, backend="triton")
        out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
