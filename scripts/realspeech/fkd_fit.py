"""How much of a teacher's stored features a model's encoder layer explains, in sample and out
of sample: the feature distillation loss (``train.feature_kd``) of batches of a manifest, with the
ridge map fitted to the batch itself and cross-fitted (fitted on every other utterance, scored on
the rest), at several ridge strengths.

    PYTHONPATH=src python scripts/realspeech/fkd_fit.py --store FEATS --manifest TRAIN.jsonl \
        [--model M] [--layer 8] [--which people|synthetic|all] [--batch-seconds 200] \
        [--batches 6] [--ridge 0.001 1] [--json PATH]

"people" are the ids of the extra sets of people (``tux-``, ``czech-``, as
scripts/device/kd_compare.py names them), "synthetic" the others; repeats (``-rK``) are left out.
Utterances are shuffled with a fixed seed and dealt into batches of --batch-seconds of audio, as
training batches them; the model runs in eval mode (no augmentation), once a batch, and every
setting is scored on that batch's layer output (the config's default delay). A loss near 1 out of
sample means the map fitted to half of the batch predicts the other half's features no better
than their mean: what the in-sample loss shows below 1 was a chance fit.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from mamba_asr import load_model
from mamba_asr.audio import load_audio
from mamba_asr.config import FeatureKDConfig
from mamba_asr.data.manifest import read_manifest
from mamba_asr.train.feature_kd import FeatureTargets, encoder_layers, feature_kd_loss

PEOPLE = ("tux-", "czech-")


def batches(utts: list, seconds: float, count: int) -> list[list]:
    out, i = [], 0
    for _ in range(count):
        batch, total = [], 0.0
        while total < seconds and i < len(utts):
            batch.append(utts[i])
            total += utts[i].duration
            i += 1
        if batch:
            out.append(batch)
    return out


@torch.no_grad()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--model", default=None, help="a model file; default: the bundled model")
    p.add_argument("--layer", type=int, default=8)
    p.add_argument("--which", choices=["people", "synthetic", "all"], default="all")
    p.add_argument("--batch-seconds", type=float, default=200.0)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--ridge", type=float, nargs="+", default=[1e-3, 1.0])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    store = FeatureTargets(args.store)
    utts = [u for u in read_manifest(args.manifest)
            if u.id in store.index and not u.id.rsplit("-", 1)[-1].startswith("r")]  # fmt: skip
    if args.which != "all":
        utts = [u for u in utts if u.id.startswith(PEOPLE) == (args.which == "people")]
    random.Random(0).shuffle(utts)
    asr = load_model(args.model, device="cpu")
    layers = encoder_layers(asr.model)
    if not 1 <= args.layer <= len(layers):
        raise SystemExit(f"--layer {args.layer}: the encoder has {len(layers)} layers")
    kept = {}
    layers[args.layer - 1].register_forward_hook(
        lambda module, inputs, output: kept.update(hidden=output)
    )
    settings = [(ridge, cross) for ridge in args.ridge for cross in (False, True)]
    losses: dict[tuple[float, bool], list[float]] = {s: [] for s in settings}
    delay = FeatureKDConfig().delay
    for batch in batches(utts, args.batch_seconds, args.batches):  # the encoder once a batch
        waves = [torch.as_tensor(load_audio(u.audio, asr.sample_rate)) for u in batch]
        lengths = torch.tensor([len(w) for w in waves])
        padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        feats, flen = asr.features(padded, lengths)
        out = asr.model.encode(feats, flen)
        targets = [store.get(u.id) for u in batch]
        for ridge, cross in settings:
            loss = feature_kd_loss(kept["hidden"], out.lengths, targets, delay, ridge, cross)
            losses[(ridge, cross)].append(float(loss))
    rows = []
    print("| ridge | fit | loss per batch | mean |")
    print("|---|---|---|---|")
    for (ridge, cross), values in losses.items():
        fit = "cross-fitted" if cross else "in sample"
        mean = statistics.mean(values)
        print(f"| {ridge:g} | {fit} | {' '.join(f'{v:.3f}' for v in values)} | {mean:.3f} |")
        rows.append(dict(ridge=ridge, cross_fit=cross, losses=values, mean=mean))
    if args.json:
        args.json.write_text(json.dumps(dict(vars(args) | {"manifest": str(args.manifest),
                                                           "json": str(args.json)},
                                             utterances=len(utts), rows=rows), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
