"""The host's side of the large encoders' training step on a CPU, without a GPU: the recipes' layer
stacks at tiny widths (every module, operator call and autograd Function as in the large model,
almost no arithmetic), the selective scan, the depthwise convs and BiMamba's reshuffles on their
CUDA paths' host code with the Triton launches left out (``MAMBA_ASR_DIRECTIONS=torch``: the
reshuffles as PyTorch ops, as before their kernels). What it measures is Python, autograd and
operator dispatch; what a GPU's host adds (the launches themselves, CUDA's per-operator costs) it
does not.

    PYTHONPATH=src:benchmarks:scripts python scripts/host_proxy.py [--encoders conformer conmamba]
        [--repeats 15] [--top 25] [--json PATH]

Prints per encoder the median step time, then cProfile's own time by source file and the
functions that take the most (``timing.python_host_profile``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from cuda_host_paths import cuda_host_paths

from encoder_scaling import random_batch
from mamba_asr.config import load_recipe
from mamba_asr.models.factory import build_encoder, build_frontend
from timing import host_profile_tables, python_host_profile

TINY = ["model.d_model=16", "model.d_ffn=32", "model.nhead=2", "model.frontend.channels=[4,4]"]


def step_of(encoder: str, batch: int, seconds: float):
    cfg = load_recipe(f"hparams/S2S/{encoder}_large.yaml", TINY).model
    cpu = torch.device("cpu")
    frontend, enc = build_frontend(cfg, cpu).train(), build_encoder(cfg, cpu).train()
    params = [*frontend.parameters(), *enc.parameters()]
    feats, lengths = random_batch(batch, seconds, cpu)
    lengths[1:] -= 20

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x, n = frontend(feats, lengths)
            out = enc(x, n)
        out.float().square().mean().backward()

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["conformer", "conmamba"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    for encoder in args.encoders:
        with cuda_host_paths():
            step = step_of(encoder, args.batch, args.seconds)
            for _ in range(3):
                step()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step()
                times.append((time.perf_counter() - start) * 1e3)
            py = python_host_profile(step, steps=3, top=args.top)
        result[encoder] = dict(step_ms=statistics.median(times), **py)
        print(f"## {encoder} (large recipe at tiny widths): {result[encoder]['step_ms']:.1f} ms "
              f"a step; under cProfile {py['total_ms']:.1f} ms")  # fmt: skip
        print(host_profile_tables(py, sources=12))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
