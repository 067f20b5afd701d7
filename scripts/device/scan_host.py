"""Where a selective-scan call's time goes on the GPU machine: the host's time to issue it, the
GPU's time in each kernel, and the CUDA-event time the benchmarks report.

    PYTHONPATH=src:benchmarks:scripts/device python3 scripts/device/scan_host.py [--impls triton peer]
        [--iters 50] [--json PATH]

For each anchor shape and dtype (benchmarks/scan_cuda.py's inputs) and each impl, forward and
forward+backward: ``event`` is the median CUDA-event time of a call (benchmarks/timing.py's
event_ms: the GPU idle before it, so a call whose host work outlasts its kernels is timed at its
host time); ``host`` the median time the host spends in the call before it returns, the GPU
synchronised before each call (kernels still running when it returns are not counted);
``gpu`` the summed time of the call's kernels on the GPU (torch.profiler, averaged over iters),
with the kernels that take the most. event close to host and well above gpu: the host bounds it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from scan_cuda import SHAPES, make_inputs, runner
from timing import event_ms, gpu_kernels


def host_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", nargs="+", default=["triton", "peer"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", type=Path, default=Path("scan_host.json"))
    p.add_argument("--cprofile", action="store_true",
                   help="also cProfile the host side of each impl's forward+backward (bf16, L512)")  # fmt: skip
    args = p.parse_args(argv)
    peer_fn = None
    if "peer" in args.impls:
        import peer_scan

        peer_fn = peer_scan.load()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| impl | dtype | L | pass | event ms | host ms | gpu ms | top kernels (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for dtype, (batch, dim, length) in itertools.product(args.dtypes, SHAPES):
        inputs = make_inputs(batch, dim, length, getattr(torch, dtype))
        for impl, backward in itertools.product(args.impls, (False, True)):
            fn = runner(impl, peer_fn, inputs, backward)
            ev = event_ms(fn, args.iters)
            host = host_ms(fn, args.iters)
            kern = gpu_kernels(fn, args.iters)
            gpu = sum(kern.values())
            top = sorted(kern.items(), key=lambda kv: -kv[1])[:4]
            tops = "; ".join(f"{k[:40]} {v:.3f}" for k, v in top)
            name = "fwd+bwd" if backward else "fwd"
            print(f"| {impl} | {dtype} | {length} | {name} | {ev:.3f} | {host:.3f} | {gpu:.3f} | "
                  f"{tops} |", flush=True)  # fmt: skip
            rows.append(dict(impl=impl, dtype=dtype, B=batch, D=dim, L=length, pass_=name,
                             event_ms=ev, host_ms=host, gpu_ms=gpu, kernels=kern))  # fmt: skip
    args.json.write_text(json.dumps(rows, indent=2))
    if args.cprofile:
        import cProfile
        import pstats

        inputs = make_inputs(*SHAPES[0], torch.bfloat16)
        for impl in args.impls:
            fn = runner(impl, peer_fn, inputs, True)
            host_ms(fn, 5)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                fn()
            prof.disable()
            torch.cuda.synchronize()
            print(f"## cProfile, {impl}, forward+backward, bf16 L{SHAPES[0][2]}, 200 calls")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
