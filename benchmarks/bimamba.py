"""BiMamba fused (both directions in one pass) against two-pass: forward+backward time and op count.

    python benchmarks/bimamba.py --device cpu --threads 2
    python benchmarks/bimamba.py --device cpu --threads 2 --encoder --seconds 10 20
    python benchmarks/bimamba.py --device cuda --batch 8 --lengths 250 500 1000

Layer rows: one BiMamba block (d_model 144, d_state 16, expand 2: ConMamba small) on random
(batch, frames, d_model) input with ragged lengths (the last utterance 3/4 long). With --encoder,
also the front end + encoder of hparams/S2S/conmamba_{size}.yaml (training mode) on random
80-mel features of 100 frames per second, as in encoder_scaling.py. The two paths share one set
of weights and alternate repeat by repeat; time is the median (and the minimum) of --repeats
after a warm-up, the speed-up the ratio of the medians (CUDA runs under bf16 autocast, the CPU
in fp32). "aten ops" counts the operators one forward+backward dispatches, views left out: about
one kernel launch each on a GPU, what a launch-bound run pays for.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from encoder_scaling import build  # benchmarks/ is on sys.path when this file runs
from mamba_asr.device import autocast
from mamba_asr.modules.mamba import BiMamba
from timing import RESULTS, seconds


class CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched, backward included, views left out (no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func is not torch.ops.aten._unsafe_view.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, BiMamba):
            module.fused = fused


def encoder_model(size: str, device: torch.device) -> torch.nn.Module:
    """Front end + ConMamba encoder of ``hparams/S2S/conmamba_{size}.yaml``, as encoder_scaling
    times it."""
    return build("conmamba", size, device)


def ragged(batch: int, frames: int, device: torch.device) -> torch.Tensor:
    lengths = torch.full((batch,), frames, device=device)
    if batch > 1:
        lengths[-1] = frames * 3 // 4
    return lengths


def make_step(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with autocast(x.device):
            out = model(x, lengths)
        out.float().square().mean().backward()

    return step


def compare(model: torch.nn.Module, step: Callable[[], None], device, repeats: int) -> dict:
    """Median ms and aten op count of step, fused and two-pass, alternating."""
    times: dict[bool, list[float]] = {True: [], False: []}
    ops = {}
    for fused in (True, False):
        set_fused(model, fused)
        step()  # warm-up
        with CountOps() as counter:
            step()
        ops[fused] = counter.count
    for _ in range(repeats):
        for fused in (True, False):
            set_fused(model, fused)
            times[fused].append(seconds(step, device) * 1e3)
    set_fused(model, True)
    model.zero_grad(set_to_none=True)
    fused_ms, two_ms = statistics.median(times[True]), statistics.median(times[False])
    return dict(
        two_pass_ms=two_ms,
        fused_ms=fused_ms,
        speedup=two_ms / fused_ms,
        two_pass_min_ms=min(times[False]),
        fused_min_ms=min(times[True]),
        two_pass_ops=ops[False],
        fused_ops=ops[True],
    )


def row(what: str, r: dict) -> dict:
    print(f"| {what} | {r['two_pass_ms']:.1f} ({r['two_pass_min_ms']:.1f}) | {r['fused_ms']:.1f} "
          f"({r['fused_min_ms']:.1f}) | {r['speedup']:.2f}x | {r['two_pass_ops']} | "
          f"{r['fused_ops']} |", flush=True)  # fmt: skip
    return dict(what=what, **r)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--d-model", type=int, default=144)
    p.add_argument("--lengths", type=int, nargs="+", default=[1000], help="layer frames")
    p.add_argument("--encoder", action="store_true", help="also the ConMamba encoder")
    p.add_argument("--size", choices=("small", "large"), default="small")
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 20], help="encoder audio")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=RESULTS / "bimamba.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cmd = (f"python benchmarks/bimamba.py --device {args.device} --batch {args.batch} "
           f"--d-model {args.d_model} --lengths {' '.join(map(str, args.lengths))}")  # fmt: skip
    if args.encoder:
        cmd += f" --encoder --size {args.size} --seconds {' '.join(f'{s:g}' for s in args.seconds)}"
    print(f"# {cmd}")
    print(f"# {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}")  # fmt: skip
    print(
        "| case | two-pass ms (min) | fused ms (min) | speed-up | two-pass aten ops | fused aten ops |"
    )
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    rows = []
    layer = BiMamba(args.d_model, d_state=16, expand=2, d_conv=4, device=device).train()
    for frames in args.lengths:
        x = torch.randn(args.batch, frames, args.d_model, device=device)
        step = make_step(layer, x, ragged(args.batch, frames, device))
        r = compare(layer, step, device, args.repeats)
        rows.append(row(f"BiMamba layer, B={args.batch}, L={frames}", r))
    if args.encoder:
        model = encoder_model(args.size, device)
        for seconds in args.seconds:
            frames = int(seconds * 100)
            feats = torch.randn(args.batch, frames, 80, device=device)
            step = make_step(model, feats, ragged(args.batch, frames, device))
            r = compare(model, step, device, args.repeats)
            rows.append(row(f"conmamba_{args.size} encoder, B={args.batch}, {seconds:g} s", r))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=name, torch=torch.__version__, threads=torch.get_num_threads(), cmd=cmd)
    args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
