"""RNN-T loss, forward+backward: ours (pure PyTorch) beside torchaudio's fused kernel when present.

    python benchmarks/rnnt.py --device cuda     # shapes of ../shared/anchors.md
    python benchmarks/rnnt.py --device cpu --shapes 4,100,30,64

Random logits (B, T, U+1, V) and targets; time is the median of --repeats (CUDA events on the
GPU); "extra GiB" is the peak memory beyond the logits during forward+backward (CUDA only).
Writes benchmarks/results/rnnt_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mamba_asr.ops.rnnt_loss import rnnt_loss


def inputs(batch, frames, labels, vocab, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=g).to(device)
    targets = torch.randint(1, vocab, (batch, labels), generator=g, dtype=torch.int32).to(device)
    logit_lengths = torch.full((batch,), frames, dtype=torch.int32, device=device)
    target_lengths = torch.full((batch,), labels, dtype=torch.int32, device=device)
    return logits.requires_grad_(), targets, logit_lengths, target_lengths


def impls():
    found = {"ours": lambda *a: rnnt_loss(*a, blank=0, reduction="mean")}
    try:
        import torchaudio.functional as AF

        found["torchaudio"] = lambda *a: AF.rnnt_loss(*a, blank=0, reduction="mean")
    except ImportError:
        print("# torchaudio not installed: ours only")
    return found


def measure(fn, args, device, repeats):
    logits = args[0]

    def step():
        logits.grad = None
        fn(*args).backward()

    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    extra = None
    if device.type == "cuda":
        logits.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - base) / 2**30
    value = fn(*args).item()
    return statistics.median(times) * 1e3, extra, value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="+", default=None, help="B,T,U,V ...")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = args.shapes or (
        ["16,250,60,256", "16,500,120,1024"] if device.type == "cuda" else ["4,100,30,64"]
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# python benchmarks/rnnt.py --device {args.device} --shapes {' '.join(shapes)}")
    print(f"# {name}, torch {torch.__version__}, fp32 logits")
    print(
        "| impl | B | T | U | V | fwd+bwd ms | extra GiB | loss | torchaudio/ours time | ours/torchaudio memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        b, t, u, v = (int(x) for x in shape.split(","))
        args_ = inputs(b, t, u, v, device)
        res = {}
        for impl, fn in impls().items():
            ms, extra, value = measure(fn, args_, device, args.repeats)
            res[impl] = dict(impl=impl, B=b, T=t, U=u, V=v, ms=ms, extra_gib=extra, loss=value)
        ta = res.get("torchaudio")
        for r in res.values():
            tr = ta["ms"] / r["ms"] if ta else None
            mr = r["extra_gib"] / ta["extra_gib"] if ta and ta["extra_gib"] else None
            f = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
            print(f"| {r['impl']} | {b} | {t} | {u} | {v} | {r['ms']:.2f} | {f(r['extra_gib'], '.2f')} "
                  f"| {r['loss']:.4f} | {f(tr, '.2f')}x | {f(mr, '.2f')}x |", flush=True)  # fmt: skip
            rows.append(r)
    out = Path("benchmarks/results") / f"rnnt_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
