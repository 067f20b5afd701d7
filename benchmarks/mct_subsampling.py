"""Mamba-CNN transducer at 4x vs 8x subsampling: training step cost against audio length.

    python benchmarks/mct_subsampling.py [--seconds 5 10 20] [--threads 2]

Recipe hparams/Transducer/mct_small.yaml, front end at 4x (2 stages) or 8x (3 stages); one
utterance of random features with a target of 3 tokens per second (256-piece vocabulary, about
LibriSpeech's rate); forward+backward of the full loss (RNN-T over the whole T x U x V joint +
aux CTC). Reports time (median of --repeats) and the joint's size, the memory that grows as T*U*V.
"""

from __future__ import annotations

import argparse

import torch

from mamba_asr.config import load_recipe
from mamba_asr.models.factory import build_model
from timing import median_ms

SETTINGS = {4: ["model.frontend.subsampling=4", "model.frontend.channels=[256, 256]"],
            8: ["model.frontend.subsampling=8", "model.frontend.channels=[256, 256, 256]"]}  # fmt: skip


def step(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    model.loss(*batch).loss.backward()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# python benchmarks/mct_subsampling.py --seconds {' '.join(f'{s:g}' for s in args.seconds)} "
          f"--threads {args.threads}")  # fmt: skip
    print("| subsampling | audio s | frames | tokens | joint MiB | fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    for factor, overrides in SETTINGS.items():
        torch.manual_seed(0)
        model = build_model(load_recipe("hparams/Transducer/mct_small.yaml", overrides).model)
        for seconds in args.seconds:
            frames, tokens = int(100 * seconds), int(3 * seconds)
            feats = torch.randn(1, frames, 80)
            targets = torch.randint(3, model.vocab_size, (1, tokens))
            lengths, tlen = torch.tensor([frames]), torch.tensor([tokens])

            batch = (feats, lengths, targets, tlen)
            ms = median_ms(lambda m=model, b=batch: step(m, b), args.repeats)
            t_enc = -(-frames // factor)
            joint = t_enc * (tokens + 1) * model.vocab_size * 4 / 2**20
            print(f"| {factor}x | {seconds:g} | {t_enc} | {tokens} | {joint:.0f} | "
                  f"{ms:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
