"""Where the host time of the eager pruned RNN-T step goes (the step of benchmarks/rnnt.py,
triton backend): the CPU time of each phase of the forward and of the backward, measured with
perf_counter around the Python calls (kernels run asynchronously, so a phase's time is what the
host spends launching it), beside the step's wall time (CUDA events), and the host cost of one
launch: a Triton kernel through its wrapper, the same autograd Function, and one aten op. The step
three ways: ``pruned_transducer_loss`` as one autograd node with the direct launches of
``ops.triton_launch``, the same with triton's own launches (MAMBA_ASR_TRITON_LAUNCH=jit), and the
steps as separate modules and autograd nodes (``BandJoiner.loss`` join="band").

    python scripts/device/rnnt_host.py [--shapes B,T,U,V ...] [--steps 50] [--cprofile 30]

--cprofile N: also N steps of the first shape under cProfile, the functions by their own time.
--methods: the benchmark's step (benchmarks/rnnt.py pruned_case, and torchaudio's loss) timed
several ways: as benchmarks/rnnt.py does (perf_counter between two synchronizations, median of
10 after 1 warm-up), with more warm-up and repeats, with CUDA events, with the garbage
collector off.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from mamba_asr.ops.pruned_rnnt import (  # noqa: E402
    band_join,
    prune_ranges,
    rnnt_loss_simple,
)
from mamba_asr.ops.triton_launch import LAUNCH_ENV  # noqa: E402
from rnnt import full_case, joiner_inputs, pruned_case  # noqa: E402
from timing import event_ms, median_ms  # noqa: E402


def phases(heads, enc, pred, lattice, prune_range, times, clear, join="fused"):
    """One step of BandJoiner.loss (triton backend, its ``join``) + backward after ``clear()``
    (the gradients), each phase's host time added to ``times``."""
    clear()
    clock = [time.perf_counter()]

    def mark(name):
        now = time.perf_counter()
        times[name] += now - clock[0]
        clock[0] = now

    loss = heads.loss(enc, pred, *lattice, prune_range, "triton", join, mark=mark)
    loss.backward()
    mark("backward (whole)")
    return loss


def launch_costs(enc, pred, ranges, n=200):
    """Host microseconds a call: the band_join kernel through its wrapper (no autograd), the
    autograd Function, and torch.tanh of the same output size."""
    from mamba_asr.ops.rnnt_triton import band_join_triton

    ep, pp = enc.detach().contiguous(), pred.detach().contiguous()
    big = torch.empty(*ranges.shape, enc.shape[-1], device=enc.device)
    calls = {
        "band_join_triton (wrapper, one launch)": lambda: band_join_triton(ep, pp, ranges),
        "band_join (autograd Function, no grad)": lambda: band_join(ep, pp, ranges, "triton"),
        "torch.tanh (one aten op)": lambda: torch.tanh(big),
        "torch.empty (allocation only)": lambda: torch.empty_like(big),
    }
    out = {}
    for name, call in calls.items():
        for _ in range(10):
            call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            call()
        out[name] = (time.perf_counter() - start) / n * 1e6
        torch.cuda.synchronize()
    return out


def timing_methods(b: int, t: int, u: int, v: int, dim: int, prune_range: int) -> None:
    """The pruned step and torchaudio's loss, each timed four ways, side by side."""
    device = torch.device("cuda")
    steps = {"pruned": pruned_case(b, t, u, v, device, dim, prune_range, "triton")[0]}
    try:
        import torchaudio.functional as AF

        loss = lambda *a: AF.rnnt_loss(*a, blank=0, reduction="mean")  # noqa: E731
        steps["torchaudio"] = full_case(loss, b, t, u, v, device)[0]
    except ImportError:
        pass
    print("\n| step | benchmark (10 after 1) | 50 after 10 | CUDA events, 50 | gc off, 50 |")
    print("|---|---|---|---|---|")
    for name, step in steps.items():
        row = [median_ms(step, 10, device, warmup=1), median_ms(step, 50, device, warmup=10),
               event_ms(step, 50, warmup=0)]  # fmt: skip
        gc.disable()
        try:
            row.append(median_ms(step, 50, device, warmup=5))
        finally:
            gc.enable()
        print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16,250,60,256", "16,500,120,1024"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--prune-range", type=int, default=5)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    parser.add_argument("--methods", action="store_true")
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, fp32, J={args.dim}")
    for shape in args.shapes:
        b, t, u, v = map(int, shape.split(","))
        enc, pred, lattice, heads, clear = joiner_inputs(b, t, u, v, "cuda", args.dim)
        # one autograd node, with the direct launches and with triton's own; the steps one by one
        for join, how in (("fused", "direct"), ("fused", "jit"), ("band", "direct")):
            os.environ[LAUNCH_ENV] = how
            for _ in range(5):
                phases(heads, enc, pred, lattice, args.prune_range, defaultdict(float), clear, join)
            torch.cuda.synchronize()
            times: dict[str, float] = defaultdict(float)  # each phase's host time, summed
            step = partial(phases, heads, enc, pred, lattice, args.prune_range, times, clear, join)
            wall = event_ms(step, args.steps, warmup=0)
            host = sum(times.values()) / args.steps * 1e3
            print(f"\n## B{b} T{t} U{u} V{v}, join {join}, {how} launches: wall {wall:.2f} ms (median of "
                  f"{args.steps}), host {host:.2f} ms a step")  # fmt: skip
            print("| phase | host ms a step |\n|---|---|")
            for name, total in times.items():
                print(f"| {name} | {total / args.steps * 1e3:.3f} |")
        os.environ.pop(LAUNCH_ENV)
        simple = rnnt_loss_simple(heads.simple_lm(pred), heads.simple_am(enc), *lattice,
                                  reduction="none", backend="triton")  # fmt: skip
        ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, *lattice[1:],
                              args.prune_range, backend="triton").contiguous()  # fmt: skip
        print("\n| call | host us |\n|---|---|")
        for name, us in launch_costs(heads.enc_proj(enc), heads.pred_proj(pred), ranges).items():
            print(f"| {name} | {us:.1f} |")
        if args.methods:
            timing_methods(b, t, u, v, args.dim, args.prune_range)
        if args.cprofile and shape == args.shapes[0]:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.cprofile):
                phases(heads, enc, pred, lattice, args.prune_range, defaultdict(float), clear)
            torch.cuda.synchronize()
            profile.disable()
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text).sort_stats("tottime")
            stats.print_stats(40)
            print(f"\n## cProfile, {args.cprofile} steps (per-call times include its overhead)")
            print(text.getvalue())


if __name__ == "__main__":
    main()
