"""Bytes a large encoder's training step writes, by operator and source line, on the CPU: where the
copies are, without a GPU.

    PYTHONPATH=src:benchmarks:scripts python scripts/encoder_writes.py [--encoder conmamba] [--size large]
        [--batch 2] [--seconds 4 8] [--top 25] [--json PATH]

One forward (bf16 autocast, as on CUDA) and backward of benchmarks/encoder_scaling.py's front end +
encoder, every utterance but the first 0.5 s shorter, under a dispatch mode that adds up each
operator's output bytes (views and allocations left out) under the line of mamba-asr that called it
("(backward)" for the autograd engine's). The selective scan, the depthwise convs and BiMamba's
reshuffles take their CUDA paths' host code with the Triton launches left out
(``cuda_host_paths.py``), so the operators around them are those a GPU runs; what the kernels
themselves write is not an operator's and is not counted. The step runs at the two lengths of
--seconds and the table shows what the longer one writes beyond the shorter, the part that grows
with the audio (weight casts and other per-step constants drop out).
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch
from cuda_host_paths import cuda_host_paths

from encoder_scaling import build, random_batch
from timing import BytesWritten


def calling_line() -> str:
    """The line of mamba-asr that called the current operator ("(backward)" for the autograd
    engine's)."""
    for frame in reversed(traceback.extract_stack()):
        if "mamba_asr" in frame.filename:
            return f"{frame.filename.split('src/')[-1]}:{frame.lineno}"
    return "(backward)"


def step_writes(model, batch: int, seconds: float) -> dict[tuple[str, str], list[int]]:
    feats, lengths = random_batch(batch, seconds, torch.device("cpu"))
    lengths[1:] -= 50

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(feats, lengths)
        out.float().square().mean().backward()

    step()  # gradients allocated
    with BytesWritten(calling_line) as w:
        step()
    return dict(w.rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="conmamba")
    p.add_argument("--size", default="large")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, nargs=2, default=[4.0, 8.0])
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build(args.encoder, args.size, torch.device("cpu"))
    with cuda_host_paths():
        short, long = (step_writes(model, args.batch, s) for s in args.seconds)
    grows = {k: (v[0], v[1] - short.get(k, [0, 0])[1]) for k, v in long.items()}
    total = sum(b for _n, b in grows.values())
    print(f"# {args.encoder} {args.size}, batch {args.batch}: {args.seconds[1]:g} s against "
          f"{args.seconds[0]:g} s, {total / 2**20:.1f} MiB more written in "
          f"{sum(n for n, _b in grows.values())} operator calls")  # fmt: skip
    print("| MiB | calls | operator | called from |")
    print("|---|---|---|---|")
    for (name, where), (calls, nbytes) in sorted(grows.items(), key=lambda kv: -kv[1][1])[
        : args.top
    ]:
        print(f"| {nbytes / 2**20:.2f} | {calls} | {name} | {where} |")
    if args.json:
        rows = [dict(op=k[0], at=k[1], calls=v[0], bytes=v[1]) for k, v in grows.items()]
        args.json.write_text(json.dumps(dict(vars(args) | {"json": str(args.json)}, rows=rows,
                                             total_bytes=total), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
