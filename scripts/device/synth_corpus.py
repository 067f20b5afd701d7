"""Synthesise the training and dev corpora on the GPU machine (or anywhere the engines run).

    python3 scripts/device/synth_corpus.py TEXT_DIR OUT --train-hours 55 --dev-hours 0.5

TEXT_DIR holds train.txt and dev.txt (scripts/synth/prepare_text.py). Each engine is tried on
one sentence first; one that fails here is left out (named in the output), and so is one that
``--engine-weights`` gives no weight (piper, carried on its own, with older weight lists). The training corpus
leaves out the voices of ``--held-out`` (default HELD_OUT: espeak-ng variants m7 and f4 of every
accent; patterns such as ``flite:*`` leave out a whole family): the dev corpus speaks dev
sentences with every voice, so its WER splits into seen and unseen voices. With
``--held-out-dev`` the dev corpus speaks only the training voices and a second one,
OUT/dev_heldout, only the held-out ones (validation then never hears a held-out voice). Noise
and reverberation on all. Writes OUT/train, OUT/dev[, OUT/dev_heldout] (LibriSpeech layout +
manifest.jsonl) and OUT/synth.json (hours, utterances, wall time, speed).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from mamba_asr.data.synth import ENGINES, synthesize_corpus

HELD_OUT = ("espeak-ng:*+m7", "espeak-ng:*+f4")


def working_engines(text: Path) -> list[str]:
    ok = []
    for engine in ENGINES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                synthesize_corpus([text], Path(tmp) / "c", hours=1e-4, engines=[engine],
                                  progress=False)  # fmt: skip
                ok.append(engine)
            except (OSError, ValueError) as e:
                print(f"engine {engine} left out: {e}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("text_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-hours", type=float, default=55.0)
    parser.add_argument("--dev-hours", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine-weights", nargs="+", default=None, metavar="ENGINE=W",
                        help="each engine's share of the training utterances")  # fmt: skip
    parser.add_argument(
        "--held-out",
        nargs="+",
        default=list(HELD_OUT),
        metavar="PATTERN",
        help="voices left out of training (fnmatch on labels, e.g. flite:*)",
    )
    parser.add_argument(
        "--held-out-dev",
        action="store_true",
        help="dev: training voices only; dev_heldout: the held-out voices",
    )
    parser.add_argument("--no-train", action="store_true",
                        help="the dev sets only (to remake a GPU run's dev sets elsewhere)")  # fmt: skip
    args = parser.parse_args()
    engines = working_engines(args.text_dir / "dev.txt")
    print("engines:", engines)
    weights = None
    if args.engine_weights:
        weights = {k: float(v) for k, _, v in (w.partition("=") for w in args.engine_weights)}
        weights = {k: v for k, v in weights.items() if k in engines}
        if unweighted := [e for e in engines if e not in weights]:
            print(f"engines without a weight left out: {', '.join(unweighted)}")
            engines = [e for e in engines if e in weights]
    held = tuple(args.held_out)
    report = {"engines": engines, "held_out_voices": list(held), "engine_weights": weights}
    sets = [("dev", args.dev_hours, 1000 + args.seed, None, held if args.held_out_dev else ())]
    if args.held_out_dev:
        sets.append(("dev_heldout", args.dev_hours, 2000 + args.seed, held, ()))
    if not args.no_train:
        sets.append(("train", args.train_hours, args.seed, None, held))
    for name, hours, seed, include, exclude in sets:
        r = synthesize_corpus(
            [args.text_dir / f"{name.split('_')[0]}.txt"], args.out / name, hours=hours,
            seed=seed, workers=args.workers, engines=engines, noise=True, reverb=True,
            progress=False, voices=include, exclude_voices=exclude,
            engine_weights=weights if name == "train" else None,
        )  # fmt: skip
        report[name] = {"hours": r.audio_seconds / 3600, "utterances": r.utterances,
                        "speakers": r.speakers, "wall_s": r.wall_seconds, "x_real_time": r.speed}  # fmt: skip
        print(
            f"{name}: {r.audio_seconds / 3600:.2f} h, {r.utterances} utterances, "
            f"{r.speakers} voices, {r.wall_seconds:.0f} s ({r.speed:.0f}x real time)"
        )
    (args.out / "synth.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
