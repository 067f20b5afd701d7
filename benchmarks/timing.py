"""Timing and memory measurement shared by the benchmarks (each runs as a script from
``benchmarks/``, so ``from timing import median_ms`` finds this file)."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# where the benchmarks write their JSON by default, whatever the working folder
RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    """Wall-clock seconds of one ``fn()``; on CUDA, with the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_ms(
    fn: Callable[[], Any], repeats: int, device: torch.device | None = None, warmup: int = 1
) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn, device) for _ in range(repeats)) * 1e3


def event_ms(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` on the GPU's clock (a CUDA event
    before and after each, synchronised), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def device_ms(fn: Callable[[], Any], device: str, iters: int) -> float:
    """Median milliseconds of ``iters`` calls of ``fn`` after one untimed: CUDA events on
    "cuda" (``event_ms``), the wall clock elsewhere."""
    if device == "cuda":
        return event_ms(fn, iters)
    fn()
    return statistics.median(seconds(fn) for _ in range(iters)) * 1e3


# operators that write no data of their own: views and allocations
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice", "select", "split",
    "split_with_sizes", "chunk", "unsqueeze", "squeeze", "detach", "alias", "as_strided",
    "empty", "empty_like", "new_empty", "empty_strided", "unbind", "narrow", "reshape",
})  # fmt: skip


class BytesWritten(TorchDispatchMode):
    """While open: the bytes of every operator's outputs (VIEW_OPS left out), in ``total`` and
    per (operator, ``label()``) in ``rows`` as [calls, bytes]; ``label`` is called once an
    operator (e.g. the calling line), by default it gives ""."""

    def __init__(self, label: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.label, self.total = label, 0
        self.rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            nbytes = sum(o.numel() * o.element_size() for o in outs if torch.is_tensor(o))
            self.total += nbytes
            row = self.rows[(name, self.label())]
            row[0] += 1
            row[1] += nbytes
        return out


def cuda_peak_gib(fn: Callable[[], Any], device: torch.device) -> float:
    """GiB the CUDA allocator's peak rises above what is allocated before one ``fn()``."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def _source(filename: str) -> str:
    """Where a profiled function lives: "mamba_asr/<module path>", "triton", "torch" (its Python),
    "C" (a builtin: an operator's C++ side, a launch, a CUDA call) or "other"."""
    if filename == "~":
        return "C"
    path = filename.replace("\\", "/")
    for package in ("mamba_asr", "triton", "torch"):
        marker = f"/{package}/"
        if marker in path:
            return f"mamba_asr/{path.split(marker, 1)[1]}" if package == "mamba_asr" else package
    return "other"


def python_host_profile(fn: Callable[[], Any], steps: int = 3, top: int = 20) -> dict:
    """The host's time of ``fn()`` by where it runs, from cProfile over ``steps`` calls, with the
    autograd engine in the calling thread (cProfile slows Python down, so compare these between
    two callables, not with wall times): ``total_ms``
    a call; ``by_source``, ms a call of each function's own time grouped by ``_source`` (our
    modules by file); ``functions``, the ``top`` functions by own time as (name, ms a call,
    calls a call)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    # the backward in this thread (on CUDA autograd runs it in a thread of its own, which
    # cProfile would not see)
    with torch.autograd.set_multithreading_enabled(False):
        prof.enable()
        for _ in range(steps):
            fn()
        prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (prim calls, calls, own s, cum s, ...)
    by_source: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_prim, calls, own, _cum, _callers) in stats.items():
        source = _source(filename)
        by_source[source] += own * 1e3 / steps
        where = (
            name
            if filename == "~"
            else f"{source if source != 'other' else filename}:{line}({name})"
        )
        rows.append((where, own * 1e3 / steps, calls / steps))
    rows.sort(key=lambda r: -r[1])
    return dict(total_ms=sum(by_source.values()),
                by_source=dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
                functions=rows[:top])  # fmt: skip


def host_profile_tables(profile: dict, sources: int = 15) -> str:
    """``python_host_profile``'s result as two markdown tables: own time by source (the first
    ``sources``), then its functions."""
    lines = ["| source | own ms |", "|---|---|"]
    lines += [f"| {src} | {ms:.2f} |" for src, ms in list(profile["by_source"].items())[:sources]]
    lines += ["| function | own ms | calls |", "|---|---|---|"]
    lines += [
        f"| {where[:100]} | {ms:.2f} | {calls:g} |" for where, ms, calls in profile["functions"]
    ]
    return "\n".join(lines)


def gpu_kernels(fn, iters: int, warmup: int = 1) -> dict[str, float]:
    """Milliseconds per call of each CUDA kernel fn launches (name -> ms), over iters calls after
    warmup ones (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out[ev.name] += ev.device_time / 1e3 / iters
    return dict(out)


def in_turn(names: list[str], rounds: int) -> list[str]:
    """``names`` ``rounds`` times over, the order reversed every other round (A B, B A, A B, ...):
    a slow spell of the host or the GPU falls on each alike."""
    return [n for r in range(rounds) for n in (names if r % 2 == 0 else names[::-1])]
