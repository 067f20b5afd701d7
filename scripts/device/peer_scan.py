"""The peer's selective scan (state-spaces/mamba's CUDA kernel) for side-by-side tests and benchmarks.

    PEER_DIR=.peer/mamba_ssm PEER_BUILD=.peer/build python3 -c "import peer_scan; peer_scan.load()"

``load()`` imports a prebuilt ``$PEER_BUILD/selective_scan_cuda.so`` when there is one (a build from an
earlier run on the same image), else builds it with the peer folder's own ``peer.load`` (about 160 s)
and leaves the .so in ``$PEER_BUILD``. ``selective_scan_fn`` has the peer's signature; it loads on
first use, so ``MAMBA_ASR_SCAN_FN=peer_scan:selective_scan_fn`` points tests/ops/test_selective_scan_peer.py
at the peer. Benchmark and test use only: never imported by the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

_FN = None


def load():
    """The peer's selective_scan_fn (built or imported once per process)."""
    global _FN
    if _FN is not None:
        return _FN
    peer_dir = Path(os.environ.get("PEER_DIR", ".peer/mamba_ssm")).resolve()
    build = Path(os.environ.get("PEER_BUILD", ".peer/build")).resolve()
    sys.path.insert(0, str(peer_dir))
    so = build / "selective_scan_cuda.so"
    if so.exists():
        import torch  # noqa: F401  (the extension links against torch's libraries)

        spec = importlib.util.spec_from_file_location("selective_scan_cuda", so)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["selective_scan_cuda"] = mod
        from mamba_ssm.ops import selective_scan_interface as ssi

        ssi.selective_scan_cuda = mod
        _FN = ssi.selective_scan_fn
    else:
        import peer

        _FN = peer.load(str(build))[0]
    return _FN


def selective_scan_fn(*args, **kwargs):
    return load()(*args, **kwargs)
