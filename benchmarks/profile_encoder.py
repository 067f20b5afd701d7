"""Where an encoder's training step spends its time: the forward+backward of
benchmarks/encoder_scaling.py's front end + encoder under torch.profiler, by module kind and by
kernel.

    python benchmarks/profile_encoder.py --device cuda --size large --batch 16 --seconds 60
    python benchmarks/profile_encoder.py --device cpu --size small --batch 1 --seconds 10

For each encoder (conformer, conmamba), after a warm-up: the time of one step (median), then one
profiled step whose device time (CUDA kernels, or CPU ops on the CPU) is summed (a) by the
innermost module kind that launched it (feed-forward, attention, BiMamba, convolution module,
front end, ...; the backward is charged to the module of its forward op) and (b) by kernel or op
name, the top --top. Prints Markdown tables, writes JSON (--json) and a Chrome trace per encoder
(--trace-dir) to open in chrome://tracing or Perfetto. ``--saved`` instead sums what autograd
saves for the backward in one forward under bf16 autocast, by module kind.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from encoder_scaling import ENCODERS, build, random_batch, training_step, warm_up_gpu
from timing import RESULTS, median_ms

# module class name -> the kind it is reported as (the innermost listed class wins)
KINDS = {
    "FeedForward": "feed-forward",
    "RelPosMHAXL": "attention",
    "MultiHeadAttention": "attention",
    "BiMamba": "BiMamba",
    "Mamba": "Mamba",
    "ConvolutionModule": "convolution module",
    "ConvFrontEnd": "front end",
    "LayerNorm": "norms",
}


def hook_kinds(model: torch.nn.Module, enter, leave) -> list:
    """Call enter(kind) before and leave() after the forward of every module of a KINDS
    class; the returned handles undo it."""
    handles = []
    for module in model.modules():
        kind = KINDS.get(type(module).__name__)
        if kind is not None:
            handles.append(module.register_forward_pre_hook(lambda m, a, k=kind: enter(k)))
            handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    return handles


def tag_modules(model: torch.nn.Module) -> list:
    """Wrap the forward of every module of a KINDS class in record_function("kind::KIND")."""
    open_ranges: list = []

    def enter(kind: str) -> None:
        open_ranges.append(record_function(f"kind::{kind}"))
        open_ranges[-1].__enter__()

    def leave() -> None:  # returns None: the module's output stays
        open_ranges.pop().__exit__(None, None, None)

    return hook_kinds(model, enter, leave)


def profile_step(
    model, batch: int, seconds: float, device: torch.device, top: int, trace: Path | None
):
    step = training_step(model, batch, seconds, device)
    ms = median_ms(step, 5, device, warmup=2)
    handles = tag_modules(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    for h in handles:
        h.remove()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    cuda = device.type == "cuda"
    # CPU-side ops only: a CUDA op's self device time already holds the kernels it launched
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    ranges = sorted(
        ((e.time_range.start, e.time_range.end, e.name[6:]) for e in events
         if e.name.startswith("kind::")),
        key=lambda r: (r[0], -r[1]),
    )  # fmt: skip
    forward_end = max((end for _, end, _ in ranges), default=0)

    def innermost(t: float) -> str | None:
        found = None
        for start, end, kind in ranges:
            if start > t:
                break
            if t <= end:
                found = kind  # a later start that still covers t is nested deeper
        return found

    # (a) by kind: forward ops by the innermost kind range around them; backward ops (after the
    # forward) by the kind of the forward op with their sequence number, found on them or on
    # the autograd node above them
    kind_of_seq: dict[int, str] = {}
    by_kind: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in sorted(events, key=lambda e: e.time_range.start):
        if e.name.startswith("kind::"):
            continue
        own = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000.0
        kind = None
        if e.time_range.start <= forward_end:
            kind = innermost(e.time_range.start)
            if kind is not None and e.sequence_nr >= 0:
                kind_of_seq.setdefault(e.sequence_nr, kind)
        else:
            node = e
            while node is not None and kind is None:
                kind = kind_of_seq.get(node.sequence_nr)
                node = node.cpu_parent
        if own > 0:
            total += own
            by_kind[kind or "other"] += own
    # (b) by kernel / op name
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda a: getattr(a, key), reverse=True)
    kernels = [{"name": a.key[:90], "ms": getattr(a, key) / 1000.0, "calls": a.count}
               for a in rows[:top] if getattr(a, key) > 0 and not a.key.startswith("kind::")]  # fmt: skip
    return {"step_ms": ms, "profiled_ms": total, "by_kind": dict(by_kind), "top": kernels}


def saved_by_kind(model, batch: int, seconds: float, device: torch.device) -> dict[str, float]:
    """GiB that autograd saves for the backward in one forward under bf16 autocast (the CUDA
    dtype policy, used here on any device), by the innermost module kind that saved it; each
    storage counted once."""
    stack: list[str] = []

    def leave() -> None:  # returns None: the module's output stays
        stack.pop()

    handles = hook_kinds(model, stack.append, leave)
    seen: set[int] = set()
    by_kind: dict[str, float] = defaultdict(float)

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_kind[stack[-1] if stack else "other"] += storage.nbytes() / 2**30
        return t

    feats, lengths = random_batch(batch, seconds, device)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast(device.type, dtype=torch.bfloat16):
        model(feats, lengths)
    for h in handles:
        h.remove()
    return dict(by_kind)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="large", choices=("small", "large"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=RESULTS / "profile_encoder.json")
    p.add_argument("--trace-dir", type=Path, default=None)
    p.add_argument("--saved", action="store_true",
                   help="instead: GiB saved for the backward by module kind (bf16 autocast)")  # fmt: skip
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        warm_up_gpu(device)
    unit = "CUDA" if device.type == "cuda" else "CPU"
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "size": args.size, "batch": args.batch, "seconds": args.seconds, "encoders": {}}  # fmt: skip
    for name in args.encoders:
        torch.manual_seed(0)
        model = build(name, args.size, device)
        if args.saved:
            kinds = saved_by_kind(model, args.batch, args.seconds, device)
            report["encoders"][name] = {"saved_gib": kinds}
            total = sum(kinds.values())
            print(f"\n## {name} ({args.size}), batch {args.batch}, {args.seconds:g} s: "
                  f"{total:.3f} GiB saved for the backward (bf16 autocast)\n")  # fmt: skip
            print("| module kind | GiB | share |\n|---|---|---|")
            for kind, gib in sorted(kinds.items(), key=lambda kv: -kv[1]):
                print(f"| {kind} | {gib:.3f} | {gib / total:.0%} |")
            continue
        trace = None if args.trace_dir is None else args.trace_dir / f"trace_{name}.json"
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
        r = profile_step(model, args.batch, args.seconds, device, args.top, trace)
        report["encoders"][name] = r
        print(f"\n## {name} ({args.size}), batch {args.batch}, {args.seconds:g} s: step "
              f"{r['step_ms']:.1f} ms (median); profiled step: {r['profiled_ms']:.1f} ms of {unit} time\n")  # fmt: skip
        print("| module kind | ms | share |\n|---|---|---|")
        for kind, ms in sorted(r["by_kind"].items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {ms:.1f} | {ms / r['profiled_ms']:.0%} |")
        print(f"\n| {unit} kernel / op | ms | calls |\n|---|---|---|")
        for k in r["top"]:
            print(f"| `{k['name']}` | {k['ms']:.1f} | {k['calls']} |")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\n# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
