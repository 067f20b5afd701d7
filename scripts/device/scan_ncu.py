"""Forward+backward of a selective scan per dtype at B8 D1024 L2048 (anchors' inputs), twice, for
Nsight Compute:

    ncu --clock-control none -k regex:"_time_kernel|_lanes_kernel" python3 scripts/device/scan_ncu.py [DTYPE ...]
    ncu --clock-control none -k regex:selective_scan python3 scripts/device/scan_ncu.py --impl peer

--impl triton (ours, the default) or peer (state-spaces/mamba's CUDA kernel: scripts/device/
peer_scan.py, PEER_DIR and PEER_BUILD as there); --length L."""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mamba_asr.ops.selective_scan import selective_scan_fn  # noqa: E402
from scan_cuda import make_inputs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("dtypes", nargs="*", default=["float32", "bfloat16"])
p.add_argument("--impl", choices=("triton", "peer"), default="triton")
p.add_argument("--length", type=int, default=2048)
args = p.parse_args()
if args.impl == "peer":
    import peer_scan

    fn = peer_scan.load()
else:

    def fn(**kw):
        return selective_scan_fn(**kw, backend="triton")


for name in args.dtypes:
    x = make_inputs(8, 1024, args.length, getattr(torch, name))
    for _ in range(2):
        out = fn(**x, delta_softplus=True)
        out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
