"""Where a large encoder's training step spends the GPU's time: the kernels of one bf16
forward+backward (benchmarks/encoder_scaling.py's step), grouped by what they do.

    PYTHONPATH=src:benchmarks python3 scripts/device/encoder_profile.py [--seconds 60 ...]
        [--batch 16] [--encoders conformer conmamba] [--python] [--json PATH]

torch.profiler over --iters steps after a warm-up; per encoder and length the step's GPU time
beside its wall time (the median of --repeats steps: where the wall time is well above the GPU's,
the GPU waits) and its host side (the time until the step returns, the allocator's cudaMalloc and
cudaFree calls, synchronizing calls, the operators with the most host time; with --python the
host's Python own time by source file and function, from cProfile), each group's share
(the selective scan's kernels, matrix products, the causal conv1d, attention, norms, elementwise
and reductions) and the kernels that take the most.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from scan_host import host_ms  # scripts/device/, this file's folder

from encoder_scaling import build, training_step, warm_up_gpu
from timing import gpu_kernels, host_profile_tables, median_ms, python_host_profile

GROUPS = (  # (group, substrings of a kernel's name), first match wins
    (
        "scan",
        (
            "_time_kernel",
            "_lanes_kernel",
            "_fwd_kernel",
            "_bwd_kernel",
            "_bwd_carry",
            "selective_scan",
        ),
    ),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul", "_mma")),
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("conv", ("conv", "implicit_gemm", "cudnn", "winograd", "depthwise")),
    ("norm", ("norm", "welford")),
    ("reduce", ("reduce", "sum_", "mean")),
    ("copy/cast", ("copy", "cast", "convert", "cat", "transpose", "fill", "index")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "triton_")),
)


def group(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS:
        if any(k in low for k in keys):
            return g
    return "other"


def host_side(step, repeats: int) -> dict:
    """The host's side of a step: the median time until step() returns with the GPU idle at its
    start (host_ms), the caching allocator's cudaMalloc / cudaFree calls and retries a step (each
    waits on the GPU), the calls torch.cuda's sync debug mode flags in one step, and the operators
    with the most host time (torch.profiler, CPU only, two steps)."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    host = host_ms(step, repeats)
    keys = ("segment.all.allocated", "segment.all.freed", "num_alloc_retries")
    before = torch.cuda.memory_stats()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    malloc, free, retry = ((after.get(k, 0) - before.get(k, 0)) / repeats for k in keys)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return dict(host_ms=host, mallocs=malloc, frees=free, retries=retry, syncs=syncs, cpu_ops=ops)


def _where(event) -> str:
    """Where an operator ran from: the nearest of our functions above it (torch.profiler's Python
    frames, "file(line): name"), or the backward node it ran in, with the outermost aten operator
    below that and, where it differs, the one that launched the kernels (autocast's casts run
    inside the operator they feed). "other": no function of ours above it (on the H100s of
    2026-12-05 torch.profiler linked no Python frames above the forward's operators, which the
    CPU's profiler does, so the forward's rows fell back to operators there)."""
    op, node = event.name, None
    e = event
    while e is not None:
        name = e.name
        if name.startswith("aten::"):
            op = name
        elif "mamba_asr/" in name:
            break
        elif name.startswith("autograd::engine::evaluate_function: ") and node is None:
            node = name.split(": ", 1)[1]
        e = e.cpu_parent
    ops = op if op == event.name else f"{op} > {event.name}"
    if e is not None:
        return f"{e.name[e.name.index('mamba_asr/') + 10 :]} / {ops}"
    return f"backward {node} / {ops}" if node else f"other / {ops}"


def gpu_by_source(step, iters: int = 2) -> dict[str, tuple[float, int]]:
    """GPU ms a step of the kernels launched from each place (``_where``), with kernels a step:
    torch.profiler with Python stacks over ``iters`` steps after one."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        kernels = getattr(e, "kernels", None) or []
        if not kernels:
            continue
        row = out[_where(e)]
        row[0] += sum(k.duration for k in kernels) / 1e3 / iters
        row[1] += len(kernels) / iters
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["conformer", "conmamba"])
    p.add_argument("--size", default="large")
    p.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--python", action="store_true",
                   help="also the host's Python by source file and function (cProfile, 3 steps)")  # fmt: skip
    p.add_argument("--sources", action="store_true",
                   help="also the GPU time by where its kernels were launched from (Python stacks)")  # fmt: skip
    p.add_argument("--json", type=Path, default=Path("encoder_profile.json"))
    args = p.parse_args(argv)
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {}
    for enc in args.encoders:
        model = build(enc, args.size, device)
        for seconds in args.seconds:
            step = training_step(model, args.batch, seconds, device)
            kernels = gpu_kernels(step, args.iters, warmup=2)
            wall = median_ms(step, args.repeats, device, warmup=1)
            host = host_side(step, args.repeats)
            total = sum(kernels.values())
            groups: dict[str, float] = defaultdict(float)
            for name, ms in kernels.items():
                groups[group(name)] += ms
            print(f"## {enc} {args.size}, batch {args.batch}, {seconds:g} s: GPU {total:.1f} ms "
                  f"a step, wall {wall:.1f} ms, host {host['host_ms']:.1f} ms "
                  f"({torch.cuda.get_device_name()})")  # fmt: skip
            print(f"allocator a step: {host['mallocs']:g} cudaMalloc, {host['frees']:g} cudaFree, "
                  f"{host['retries']:g} retries; {host['syncs']} synchronizing calls "
                  f"(torch.cuda sync debug mode)")  # fmt: skip
            print(host["cpu_ops"])
            print("| group | ms | share |")
            print("|---|---|---|")
            for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
                print(f"| {g} | {ms:.1f} | {ms / total:.0%} |")
            print("| kernel | ms | group |")
            print("|---|---|---|")
            for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"| {name[:90]} | {ms:.2f} | {group(name)} |")
            if args.python:
                py = python_host_profile(step, steps=3, top=25)
                torch.cuda.synchronize()
                host["python"] = py
                print(f"host under cProfile: {py['total_ms']:.1f} ms a step, own time by source")
                print(host_profile_tables(py))
            if args.sources:
                places = gpu_by_source(step)
                host["sources"] = places
                print("| launched from / operator | GPU ms | kernels |")
                print("|---|---|---|")
                for where, (ms, n) in sorted(places.items(), key=lambda kv: -kv[1][0])[:40]:
                    print(f"| {where[:110]} | {ms:.2f} | {n:g} |")
            key = enc if len(args.seconds) == 1 else f"{enc}_{seconds:g}s"
            result[key] = dict(seconds=seconds, total_ms=total, wall_ms=wall, groups=groups,
                               kernels=kernels,
                               **{k: v for k, v in host.items() if k != "cpu_ops"})  # fmt: skip
        del model
        torch.cuda.empty_cache()
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
