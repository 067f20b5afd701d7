"""CPU decoding speed: CTC greedy and prefix beam search over random log-probabilities.

    python benchmarks/decode.py [--frames 500] [--beam 10] [--threads 1]

Log-probabilities are random but peaked (as a trained model's are); time is the median of
--repeats runs for one utterance. Writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mamba_asr.decode.ctc import ctc_greedy, ctc_prefix_beam_search
from timing import RESULTS, median_ms


def peaked_log_probs(frames: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(1, frames, vocab, generator=g)).log_softmax(-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--vocabs", type=int, nargs="+", default=[31, 256, 5000])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=RESULTS / "decode.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# python benchmarks/decode.py --frames {args.frames} --beam {args.beam} "
          f"--threads {args.threads}")  # fmt: skip
    print("| search | V | frames | ms per utterance | frames per second |")
    print("|---|---|---|---|---|")
    rows = []
    lengths = torch.tensor([args.frames])
    for vocab in args.vocabs:
        lp = peaked_log_probs(args.frames, vocab)
        for name, fn in (
            ("ctc greedy", lambda lp=lp: ctc_greedy(lp, lengths)),
            (f"ctc prefix beam {args.beam}",
             lambda lp=lp: ctc_prefix_beam_search(lp, lengths, beam=args.beam)),
        ):  # fmt: skip
            ms = median_ms(fn, args.repeats)
            rows.append(dict(search=name, vocab=vocab, frames=args.frames, ms=ms))
            print(f"| {name} | {vocab} | {args.frames} | {ms:.1f} | {args.frames / ms * 1e3:.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
