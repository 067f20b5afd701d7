"""The depthwise convolutions of ConMamba's layers: the fused Triton kernels against PyTorch's
(pad + conv1d + SiLU), forward and forward+backward.

    python benchmarks/depthwise_conv.py --device cuda [--dtypes bfloat16 float32] [--json PATH]
    python benchmarks/depthwise_conv.py --device cpu --batch 2 --length 500     (torch only)

Shapes of the large ConMamba encoder at 60 s (1500 frames after subsampling), batch --batch:
``mamba`` the causal conv of a BiMamba block (2 x 1024 channels, 4 taps, SiLU, channels-first as
the block holds them), ``module`` the "same" conv of a convolution module (512 channels, 31 taps,
no activation, channels-last as the module holds them). Times: median of --iters CUDA-event
timings (or wall-clock on the CPU); "triton/torch" > 1 means the kernels are faster. Writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from mamba_asr.ops.depthwise_conv import depthwise_conv1d
from timing import RESULTS, device_ms

# name -> (channels, taps, left, activation, channels-last)
CASES = {"mamba": (2048, 4, 3, "silu", False), "module": (512, 31, 15, None, True)}


def inputs(case: str, batch: int, length: int, dtype: torch.dtype, device: str):
    channels, taps, left, activation, last = CASES[case]
    shape = (batch, length, channels) if last else (batch, channels, length)
    x = torch.randn(*shape, device=device, dtype=dtype)
    x = (x.transpose(1, 2) if last else x).requires_grad_()
    w = (torch.randn(channels, taps, device=device) * 0.3).requires_grad_()
    b = torch.randn(channels, device=device).requires_grad_()
    return x, w, b, left, activation


def runner(args_, backend: str, backward: bool):
    x, w, b, left, activation = args_
    gy = torch.randn(x.shape, device=x.device, dtype=x.dtype)

    def call():
        y = depthwise_conv1d(x, w, b, left, activation, backend=backend)
        if backward:
            y.backward(gy)

    return call


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=1500)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--json", type=Path, default=RESULTS / "depthwise_conv.json")
    args = p.parse_args(argv)
    backends = ["torch", "triton"] if args.device == "cuda" else ["torch"]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# python benchmarks/depthwise_conv.py --device {args.device} ({name}, "
          f"torch {torch.__version__}), batch {args.batch}, {args.length} frames")  # fmt: skip
    print(
        "| case | dtype | backend | fwd ms | fwd+bwd ms | torch/backend fwd | torch/backend fwd+bwd |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for case, dtype_name in itertools.product(CASES, args.dtypes):
        data = inputs(case, args.batch, args.length, getattr(torch, dtype_name), args.device)
        res = {}
        for backend in backends:
            fwd = device_ms(runner(data, backend, False), args.device, args.iters)
            both = device_ms(runner(data, backend, True), args.device, args.iters)
            res[backend] = (fwd, both)
        for backend, (fwd, both) in res.items():
            rf, rb = res["torch"][0] / fwd, res["torch"][1] / both
            print(f"| {case} | {dtype_name} | {backend} | {fwd:.3f} | {both:.3f} | {rf:.2f}x | "
                  f"{rb:.2f}x |", flush=True)  # fmt: skip
            rows.append(dict(case=case, dtype=dtype_name, backend=backend, fwd_ms=fwd,
                             fwd_bwd_ms=both))  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(device=name, batch=args.batch, length=args.length,
                                         rows=rows), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
