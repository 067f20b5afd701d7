"""Conformer vs ConMamba encoders: forward+backward time and peak memory against audio length.

    python benchmarks/encoder_scaling.py --device cuda --size large --seconds 10 20 30 60 90 120
    python benchmarks/encoder_scaling.py --device cpu --size small --seconds 5 10 20 40

Each encoder is the front end + encoder of the recipe hparams/S2S/{conformer,conmamba}_{size}.yaml
(training mode, its dropout), on random 80-mel features of 100 frames per second. CUDA runs under
bf16 autocast (the project's dtype policy), the CPU in fp32. Time: median of --repeats steps
after two warm-up steps each, wall clock with the device synchronised around each step; by
default (--order interleaved) the two encoders' timed steps alternate, so that a slow spell of
the host (steps of a few hundred operators wait on it below about 30 s of audio on a GPU) falls
on both rather than on whichever ran then; --order sequential times one encoder's steps, then
the other's. Memory: peak allocated beyond the model and its gradients on CUDA; on the CPU (no
peak counter) what autograd saves for the backward. Also writes JSON and a plot (PNG) of both
curves.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from pathlib import Path

import torch

from mamba_asr.config import load_recipe
from mamba_asr.device import autocast
from mamba_asr.models.factory import build_encoder, build_frontend
from timing import RESULTS, cuda_peak_gib, in_turn
from timing import seconds as timed

ENCODERS = ("conformer", "conmamba")


def build(encoder: str, size: str, device: torch.device) -> torch.nn.Module:
    cfg = load_recipe(f"hparams/S2S/{encoder}_{size}.yaml").model
    frontend, enc = build_frontend(cfg, device), build_encoder(cfg, device)

    class FrontAndEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frontend, self.encoder = frontend, enc

        def forward(self, feats, lengths):
            x, lengths = self.frontend(feats, lengths)
            return self.encoder(x, lengths)

    return FrontAndEncoder().train()


def saved_gib(step) -> float:
    """GiB autograd keeps for the backward (distinct storages), for devices without a peak counter."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**30


def warm_up_gpu(device: torch.device, seconds: float = 5.0) -> None:
    """Run matrix products until the GPU has left its idle clocks (first timings are slow otherwise)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def random_batch(batch: int, seconds: float, device: torch.device):
    """Random 80-mel features of ``seconds`` of audio (100 frames per second) and their lengths."""
    frames = int(seconds * 100)
    feats = torch.randn(batch, frames, 80, device=device)
    return feats, torch.full((batch,), frames, device=device)


def training_step(model, batch: int, seconds: float, device: torch.device):
    """A closure running one forward (the project's dtype policy) and backward on a random batch,
    from gradients set to None as the trainer leaves them after each optimizer step (so the
    backward writes each gradient rather than adding it to the last step's)."""
    feats, lengths = random_batch(batch, seconds, device)

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(device):
            out = model(feats, lengths)
        out.float().square().mean().backward()

    return step


def _release(models: dict, device: torch.device) -> None:
    """Every model's gradients set to None and, on CUDA, the allocator's free blocks returned."""
    for model in models.values():
        model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(
    models: dict, batch: int, seconds: float, device: torch.device, repeats: int, order: str
) -> dict[str, tuple[float | None, float | None]]:
    """(median ms, peak GiB) of each model's training step at ``seconds`` of audio, (None, None)
    where it runs out of memory (in a warm-up step or, with the other model's gradients held
    beside its own, in a timed one). order "interleaved": the models' timed steps alternate (A B,
    then B A, ...), so a slow spell of the host or the GPU falls on both; "sequential": each
    model's ``repeats`` steps in a row, one model after the other."""
    steps, out = {}, {}
    for name, model in models.items():
        try:
            step = training_step(model, batch, seconds, device)
            step()  # warm-up; an OOM shows here
            step()
            steps[name] = step
        except torch.cuda.OutOfMemoryError:
            out[name] = (None, None)
        _release(models, device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    if order == "interleaved":
        schedule = in_turn(names, repeats)
    else:
        schedule = [n for n in names for _ in range(repeats)]
    for name in schedule:
        if name not in steps:  # out of memory in an earlier timed step
            continue
        try:
            times[name].append(timed(steps[name], device))
        except torch.cuda.OutOfMemoryError:
            del steps[name]
            out[name] = (None, None)
            _release(models, device)
    for name, step in steps.items():
        _release(models, device)
        step()  # this model's gradients allocated, as after a step: the peak is beyond them
        peak = cuda_peak_gib(step, device) if device.type == "cuda" else saved_gib(step)
        out[name] = (statistics.median(times[name]) * 1e3, peak)
    _release(models, device)
    return out


def slope(xs, ys) -> float:
    """Least-squares exponent k of y ~ x^k on a log-log scale."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def crossover(seconds, a, b) -> float | None:
    """First length (linear interpolation) where series b drops below series a."""
    for i in range(1, len(seconds)):
        d0, d1 = b[i - 1] - a[i - 1], b[i] - a[i]
        if d0 >= 0 > d1:
            return seconds[i - 1] + (seconds[i] - seconds[i - 1]) * d0 / (d0 - d1)
    return seconds[0] if b[0] < a[0] else None


def plot(rows, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for enc in ENCODERS:
        pts = [r for r in rows if r["encoder"] == enc and r["ms"] is not None]
        xs = [r["seconds"] for r in pts]
        axes[0].plot(xs, [r["ms"] for r in pts], "o-", label=enc)
        axes[1].plot(xs, [r["peak_gib"] for r in pts], "o-", label=enc)
    axes[0].set(xlabel="audio seconds", ylabel="forward+backward ms", title=title)
    axes[1].set(xlabel="audio seconds", ylabel="peak memory GiB", title=title)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"# wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=("small", "large"), default="small")
    p.add_argument("--seconds", type=float, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                   help="interleaved: the two encoders' timed steps alternate; sequential: one "
                   "encoder's steps, then the other's")  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    secs = " ".join(f"{s:g}" for s in args.seconds)
    print(f"# python benchmarks/encoder_scaling.py --device {args.device} --size {args.size} "
          f"--batch {args.batch} --seconds {secs} --repeats {args.repeats} --order {args.order}")  # fmt: skip
    print(f"# {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}")  # fmt: skip
    print(
        f"| audio s | encoder | fwd+bwd ms | {'peak' if device.type == 'cuda' else 'saved'} GiB "
        "| conformer/conmamba time | conformer/conmamba memory |"
    )
    print("|---|---|---|---|---|---|")
    rows = []
    models = {enc: build(enc, args.size, device) for enc in ENCODERS}
    if device.type == "cuda":
        warm_up_gpu(device)
    for seconds in args.seconds:
        got = measure(models, args.batch, seconds, device, args.repeats, args.order)
        res = {
            enc: dict(seconds=seconds, encoder=enc, ms=got[enc][0], peak_gib=got[enc][1])
            for enc in ENCODERS
        }
        a, b = res["conformer"], res["conmamba"]
        ok = a["ms"] is not None and b["ms"] is not None
        t_ratio = a["ms"] / b["ms"] if ok else None
        m_ratio = a["peak_gib"] / b["peak_gib"] if ok else None
        for enc, r in res.items():
            r.update(time_ratio=t_ratio, memory_ratio=m_ratio)
            f = lambda x, fmt: "OOM" if x is None else format(x, fmt)  # noqa: E731
            print(f"| {seconds:g} | {enc} | {f(r['ms'], '.1f')} | {f(r['peak_gib'], '.3f')} | "
                  f"{f(t_ratio, '.2f')}x | {f(m_ratio, '.2f')}x |", flush=True)  # fmt: skip
            rows.append(r)
    summary = {}
    for enc in ENCODERS:
        pts = [r for r in rows if r["encoder"] == enc and r["ms"] is not None]
        if len(pts) >= 2:
            xs = [r["seconds"] for r in pts]
            summary[enc] = dict(time_exponent=slope(xs, [r["ms"] for r in pts]),
                                memory_exponent=slope(xs, [r["peak_gib"] for r in pts]))  # fmt: skip
    both = [s for s in args.seconds if all(
        r["ms"] is not None for r in rows if r["seconds"] == s)]  # fmt: skip
    series = {
        e: [r["ms"] for r in rows if r["encoder"] == e and r["seconds"] in both] for e in ENCODERS
    }
    summary["time_crossover_seconds"] = crossover(both, series["conformer"], series["conmamba"])
    for enc in ENCODERS:
        if enc in summary:
            s = summary[enc]
            print(
                f"# {enc}: time ~ L^{s['time_exponent']:.2f}, memory ~ L^{s['memory_exponent']:.2f}"
            )
    print(f"# ConMamba faster than Conformer from: {summary['time_crossover_seconds']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"encoder_scaling_{device.type}_{args.size}"
    meta = dict(device=name, torch=torch.__version__, batch=args.batch, size=args.size)
    (args.out / f"{stem}.json").write_text(
        json.dumps(dict(meta=meta, rows=rows, summary=summary), indent=2)
    )
    plot(rows, args.out / f"{stem}.png", f"{args.size} encoders, {name}, batch {args.batch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
