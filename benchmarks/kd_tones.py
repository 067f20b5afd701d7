"""Knowledge distillation on the CPU: tiny transducer students with and without a teacher.

    python benchmarks/kd_tones.py --out /tmp/kd_tones --threads 2 --seeds 1234 1235

A synthetic corpus of tones (one tone of 0.15 s per character of "ABCD", 330/440/660/880 Hz,
silence for a space; random texts of 1-6 characters, noise, random level and tempo): 240
training and 60 dev utterances. The teacher: a causal Mamba transducer (8x front end, width 48, 2
layers, auxiliary CTC head) trained for --teacher-epochs. Each student (width 16, one layer, aux
CTC head, 8x: the teacher's frame rate) trains for --epochs from the same seed on the same
batches: without a teacher, and with each KD target (``train.kd``). Reported per run: the
validation loss (the student's own) and greedy WER along the epochs, WER and CER after the last
epoch and the best WER, the last KD term; and the time of one training step's forward and
backward on one batch alone and with each KD target. Writes OUT/kd_tones.json and prints a
Markdown table. ``--report`` prints the table again (or rebuilds it from the run folders).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_asr.config import load_recipe, replace_kd
from mamba_asr.train import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "hparams/Transducer/mct_small.yaml"
RATE = 16000
TONES = {"A": 330.0, "B": 440.0, "C": 660.0, "D": 880.0, " ": 0.0}
COMMON = [
    "model.vocab_size=8", "tokenizer.kind=char", "tokenizer.vocab_size=null",
    "tokenizer.alphabet='ABCD '", "model.dropout=0.0", "model.mamba.d_state=8",
    "model.transducer.aux_ctc_weight=0.2", "data.cmvn_max_utterances=100",
    "data.specaugment.freq_width=8", "data.specaugment.time_masks=2",
    "train.lr=0.003", "train.warmup_steps=40", "train.max_batch_seconds=8.0",
    "train.num_buckets=4", "train.num_workers=0", "train.log_every=10", "train.keep_best=1",
    "train.average=1", "train.checkpoint_every_steps=0",
]  # fmt: skip
TEACHER = [
    "model.d_model=48", "model.num_encoder_layers=2", "model.d_ffn=96",
    "model.frontend.channels=[32, 32, 48]", "model.transducer.predictor_dim=32",
    "model.transducer.joiner_dim=32",
]  # fmt: skip
STUDENT = [
    "model.d_model=16", "model.num_encoder_layers=1", "model.d_ffn=32",
    "model.frontend.channels=[8, 8, 16]", "model.transducer.predictor_dim=8",
    "model.transducer.joiner_dim=8",
]  # fmt: skip
RUNS: dict[str, dict[str, object]] = {  # run name (its folder): train.kd keys
    "noKD": {},
    "ctc_T1": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    "ctc_T2": {"target": "ctc", "weight": 0.5, "temperature": 2.0},
    "lattice_T1": {"target": "lattice", "weight": 0.5, "temperature": 1.0},
}


def write_set(folder: Path, count: int, seed: int) -> Path:
    """``count`` random tone utterances and their manifest in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        n = int(rng.integers(1, 7))
        text = "".join(rng.choice(list("ABCD "), n)).strip() or "A"
        tempo = rng.uniform(0.8, 1.25)
        t = np.arange(int(0.15 * tempo * RATE)) / RATE
        parts = [np.sin(2 * np.pi * TONES[c] * t + rng.uniform(0, 6.3)) for c in text]
        wave = np.concatenate([np.zeros(1600), *parts, np.zeros(1600)]) * rng.uniform(0.1, 0.5)
        wave = (wave + 0.03 * rng.standard_normal(wave.shape)).astype(np.float32)
        sf.write(folder / f"utt{i:03d}.wav", wave, RATE)
        lines.append({"id": f"{folder.name}{i}", "audio": f"utt{i:03d}.wav", "text": text,
                      "duration": len(wave) / RATE})  # fmt: skip
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def summary(run: Path) -> dict[str, object]:
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    valid = [r for r in rows if r["wer"]]
    trained = [r for r in rows if r["train_loss"]]
    steps = int(trained[-1]["step"])
    return {
        "steps": steps,
        "valid_loss": [round(float(r["valid_loss"]), 3) for r in valid],  # each epoch
        "valid_wer": [round(float(r["wer"]), 4) for r in valid],
        "wer": float(valid[-1]["wer"]),
        "cer": float(valid[-1]["cer"]),
        "best_wer": min(float(r["wer"]) for r in valid),
        "train_loss": float(trained[-1]["train_loss"]),
        "kd_loss": float(trained[-1]["kd_loss"]) if trained[-1]["kd_loss"] else None,
    }


def step_times(manifest: Path, teacher: Path, repeats: int) -> dict[str, float]:
    """Median ms of one training step's forward + backward of the student on one fixed batch
    (the first 8 s of training audio), alone and with each KD target; the variants alternate
    repeat by repeat, so a load change on the machine hits them alike."""
    from mamba_asr.asr import ASR
    from mamba_asr.data import read_manifest
    from mamba_asr.data.dataset import AsrDataset, collate
    from mamba_asr.train.distill import Teacher

    recipe = load_recipe(RECIPE, [*COMMON, *STUDENT])
    student = ASR.from_recipe(recipe, ASR.load(teacher).tokenizer).train()
    utts = read_manifest(manifest)
    data = AsrDataset(utts, student.tokenizer, RATE, speed_perturb=None)
    items, total = [], 0.0
    for i, u in enumerate(utts):
        if total + u.duration > 8.0:
            break
        items.append(data[i])
        total += u.duration
    b = collate(items)
    bundle = torch.load(teacher, weights_only=True)
    variants = {"no KD": None}
    for target in ("ctc", "lattice"):
        kd = replace_kd(recipe, teacher=str(teacher), target=target).train.kd
        variants[target] = Teacher(bundle, kd, "cpu")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats + 1):
        for name, t in variants.items():
            start = time.perf_counter()
            out = student(b.waves, b.wave_lengths, b.targets, b.target_lengths)
            loss = out.loss
            if t is not None:
                loss = loss + 0.5 * t.loss(out, b.waves, b.wave_lengths, b.targets,
                                           b.target_lengths)  # fmt: skip
            loss.backward()
            student.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def print_table(results: dict[str, dict]) -> None:
    every = 5
    print(f"\n| run | KD | seed | steps | valid loss, every {every} epochs | valid WER %, every "
          f"{every} epochs | WER % | CER % | best WER % | KD term (last step) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = ["teacher", *RUNS]
    keys = sorted((k for k in results if k != "step_ms"),
                  key=lambda k: (order.index(k.partition(" / ")[0]), k))  # fmt: skip
    for key in keys:
        r = results[key]
        name, _, seed = key.partition(" / seed ")
        kd = RUNS.get(name)
        what = f"{kd['target']}, W {kd['weight']}, T {kd['temperature']}" if kd else "-"
        term = "-" if r["kd_loss"] is None else f"{r['kd_loss']:.3f}"
        loss = " ".join(f"{v:.2f}" for v in r["valid_loss"][every - 1 :: every])
        wer = " ".join(f"{100 * v:.0f}" for v in r["valid_wer"][every - 1 :: every])
        print(f"| {name} | {what} | {seed or '-'} | {r['steps']} | {loss} | {wer} | "
              f"{100 * r['wer']:.1f} | {100 * r['cer']:.1f} | {100 * r['best_wer']:.1f} | "
              f"{term} |")  # fmt: skip
    if "step_ms" in results:
        ms = results["step_ms"]
        print("\nforward + backward of one 8 s batch (median ms): "
              + ", ".join(f"{k} {v:.0f}" for k, v in ms.items()))  # fmt: skip


def report(args: argparse.Namespace) -> None:
    """The table of a finished benchmark, or rebuilt from the run folders of OUT (with the
    step timing if OUT/step_ms.json holds it)."""
    saved = args.out / "kd_tones.json"
    if saved.is_file():
        print_table(json.loads(saved.read_text()))
        return
    results: dict[str, dict] = {}
    folders = [args.out / "teacher", *sorted(args.out.glob("seed*/*"))]
    for run in (f for f in folders if (f / "metrics.csv").is_file()):
        key = "teacher" if run.name == "teacher" else f"{run.name} / seed {run.parent.name[4:]}"
        results[key] = summary(run)
    if (args.out / "step_ms.json").is_file():
        results["step_ms"] = json.loads((args.out / "step_ms.json").read_text())
    print_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--teacher-epochs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=10, help="of the step timing")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument(
        "--report", action="store_true",
        help="print the table of OUT/kd_tones.json, or of the runs in OUT, and stop",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.report:
        report(args)
        return
    train_set = write_set(args.out / "corpus" / "train", 240, 1)
    dev_set = write_set(args.out / "corpus" / "dev", 60, 2)
    results: dict[str, object] = {}
    teacher_dir = args.out / "teacher"
    recipe = load_recipe(RECIPE, [*COMMON, *TEACHER, f"train.epochs={args.teacher_epochs}"])
    train(recipe, train_set, dev_set, teacher_dir, device="cpu")
    results["teacher"] = summary(teacher_dir)
    print("teacher", results["teacher"], flush=True)
    for seed in args.seeds:
        for name in args.runs:
            kd = RUNS[name]
            out = args.out / f"seed{seed}" / name
            recipe = load_recipe(
                RECIPE, [*COMMON, *STUDENT, f"train.epochs={args.epochs}", f"train.seed={seed}"]
            )
            if kd:
                recipe = replace_kd(recipe, teacher=str(teacher_dir / "model.pt"), **kd)
            train(recipe, train_set, dev_set, out, device="cpu")
            results[f"{name} / seed {seed}"] = summary(out)
            print(name, seed, results[f"{name} / seed {seed}"], flush=True)
    results["step_ms"] = step_times(train_set, teacher_dir / "model.pt", args.repeats)
    (args.out / "kd_tones.json").write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
