"""WER of a model on a synthetic dev set, overall and per voice, engine, accent and variant.

    python scripts/synth/eval_by_voice.py MANIFEST [--model M] [--strategy greedy|beam]
        [--lm LM.npz [--lm-weight 0.3 --length-bonus 1.0]] [--json OUT.json]

MANIFEST is a manifest.jsonl written by ``mamba-asr synth`` (its ``voice`` field names the
speaker, e.g. ``espeak-ng:en-gb-scotland+f4``). Voices matching HELD_OUT were never spoken in
the bundled model's training corpus (scripts/device/synth_corpus.py); the table shows them
apart. Prints a Markdown table; ``--json`` also writes every voice's numbers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from mamba_asr import load_model
from mamba_asr.decode import DecodingOptions
from mamba_asr.decode.options import LENGTH_BONUS, LM_WEIGHT
from mamba_asr.evaluate import evaluate, load_test_set
from mamba_asr.text import error_rates

HELD_OUT = ("espeak-ng:*+m7", "espeak-ng:*+f4")


def groups_of(voice: str) -> list[str]:
    engine, name = voice.split(":", 1)
    held = any(fnmatch.fnmatchcase(voice, p) for p in HELD_OUT)
    out = ["all", f"{'unseen' if held else 'seen'} voices", f"engine {engine}"]
    if engine == "espeak-ng":
        accent, variant = name.split("+")
        out += [f"espeak-ng accent {accent}", f"espeak-ng variant {variant}"]
    else:
        out.append(f"{engine} voice {name}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--model", default=None, help="model file (default: the bundled one)")
    parser.add_argument("--strategy", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--lm", default=None, help="n-gram LM file fused into beam search")
    parser.add_argument("--lm-weight", type=float, default=LM_WEIGHT)
    parser.add_argument("--length-bonus", type=float, default=LENGTH_BONUS)
    args = parser.parse_args()
    voices = {}
    for line in args.manifest.read_text().splitlines():
        record = json.loads(line)
        voices[record["id"]] = record["voice"]
    asr = load_model(args.model, device="cpu")
    utts = load_test_set(args.manifest)
    fusion = {"lm": args.lm, "lm_weight": args.lm_weight, "length_bonus": args.length_bonus}
    options = DecodingOptions(strategy=args.strategy, beam_size=4, **(fusion if args.lm else {}))
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate(asr, utts, Path(tmp) / "hyps.jsonl", options, progress=True)
        hyps = [json.loads(x) for x in (Path(tmp) / "hyps.jsonl").read_text().splitlines()]
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    per_voice: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for h in hyps:
        voice = voices[h["id"]]
        per_voice[voice].append((h["ref"], h["hyp"]))
        for g in groups_of(voice):
            pairs[g].append((h["ref"], h["hyp"]))

    def rates(items: list[tuple[str, str]]) -> dict[str, float]:
        r = error_rates([a for a, _ in items], [b for _, b in items])
        return {"wer": r.wer, "cer": r.cer, "utterances": len(items)}

    table = {g: rates(items) for g, items in pairs.items()}
    print(f"{args.strategy} search, {result.utterances} utterances, "
          f"{result.audio_seconds / 3600:.2f} h, RTF {result.rtf:.4f} (all threads)")  # fmt: skip
    print("| group | utterances | WER % | CER % |\n|---|---|---|---|")
    order = sorted(table, key=lambda g: (g != "all", not g.endswith("voices"), g))
    for g in order:
        t = table[g]
        print(f"| {g} | {t['utterances']} | {100 * t['wer']:.1f} | {100 * t['cer']:.1f} |")
    if args.json:
        report = {"strategy": args.strategy, "groups": table,
                  "voices": {v: rates(items) for v, items in sorted(per_voice.items())}}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
