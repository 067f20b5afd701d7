"""Knowledge distillation side by side (docs/compression.md, "Knowledge distillation"): a small
Mamba-CNN transducer trained from scratch on a synthetic corpus without a teacher, and with the
bundled mct-small-synth-en (12.2 M parameters, 8x, an auxiliary CTC head) as the teacher on each
KD target; all runs at once on one GPU, with the same seed, data order, batches and epochs.

    python3 scripts/device/kd_compare.py train CORPUS RUNS --epochs 8 --deadline UNIX_TIME \
        [--only NAME ...] [--set KEY=VALUE ...]
    python3 scripts/device/kd_compare.py evaluate CORPUS RUNS OUT.json
    python3 scripts/device/kd_compare.py report OUT.json

CORPUS comes from ``scripts/device/synth_corpus.py`` (train/, dev/). ``train`` writes the
teacher's tokenizer to RUNS/teacher_tokenizer (the student must share it) and trains every run
of RUNS_KD to ``--epochs`` epochs, each in a process of its own, stopping at ``--deadline``
(seconds since the epoch) with a checkpoint if that comes first; calling it again resumes them
(the trainer's resume is exact). ``evaluate``: greedy WER on dev/ of the teacher and of each
finished run's model.pt (no LM), with the runs' training figures, into OUT.json. ``report``:
a Markdown table of OUT.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "hparams/Transducer/mct_small.yaml"
TEACHER = "mct-small-synth-en"
# the student: the teacher's recipe at half the width and half the depth (about 2.1 M parameters
# against 12.2 M), the same front end (8x: the frame rates match) and tokenizer
STUDENT = [
    "model.d_model=128", "model.num_encoder_layers=6", "model.d_ffn=512",
    "model.frontend.channels=[128, 128, 128]", "model.transducer.predictor_dim=128",
    "model.transducer.joiner_dim=160", "model.transducer.aux_ctc_weight=0.1",
]  # fmt: skip
COMMON = [
    "train.lr=0.002", "train.warmup_steps=300", "train.max_batch_seconds=200",
    "train.num_buckets=30", "train.num_workers=3", "train.log_every=25",
    "train.checkpoint_every_steps=0", "train.keep_best=3", "train.average=3",
    "train.seed=1234", "data.specaugment.time_masks=4",
]  # fmt: skip
RUNS_KD: dict[str, dict[str, object]] = {
    "no_kd": {},
    "kd_ctc": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    "kd_ctc_t2": {"target": "ctc", "weight": 0.5, "temperature": 2.0},
    "kd_lattice": {"target": "lattice", "weight": 0.5, "temperature": 1.0},
}


def teacher_tokenizer(runs: Path) -> Path:
    from mamba_asr.asr import ASR
    from mamba_asr.pretrained import resolve_model

    folder = runs / "teacher_tokenizer"
    if not folder.is_dir():
        ASR.load(resolve_model(TEACHER)).tokenizer.save(folder)
    return folder


def one(args: argparse.Namespace) -> None:
    """Train run ``args.name`` (in this process) to its epochs or the deadline."""
    from mamba_asr.config import load_recipe, replace_kd
    from mamba_asr.train import train

    tok = teacher_tokenizer(args.runs)
    recipe = load_recipe(RECIPE, [*STUDENT, *COMMON, f"train.epochs={args.epochs}",
                                  f"tokenizer.path={tok}", *args.set])  # fmt: skip
    kd = RUNS_KD[args.name]
    if kd:
        recipe = replace_kd(recipe, teacher=args.teacher, **kd)
    out = args.runs / args.name
    start = time.time()
    result = train(recipe, args.corpus / "train" / "manifest.jsonl",
                   args.corpus / "dev" / "manifest.jsonl", out,
                   max_seconds=max(args.deadline - start, 1.0), progress=False)  # fmt: skip
    wall = out / "wall.json"
    spent = json.loads(wall.read_text()) if wall.is_file() else []
    spent.append({"seconds": time.time() - start, "step": result.step})
    wall.write_text(json.dumps(spent))
    print(f"{args.name}: step {result.step}, finished {result.finished}", flush=True)


def train_all(args: argparse.Namespace) -> None:
    args.runs.mkdir(parents=True, exist_ok=True)
    teacher_tokenizer(args.runs)
    names = args.only or list(RUNS_KD)
    procs = []
    for name in names:
        cmd = [sys.executable, __file__, "one", name, str(args.corpus), str(args.runs),
               "--epochs", str(args.epochs), "--deadline", str(args.deadline),
               "--teacher", args.teacher, "--set", *args.set]  # fmt: skip
        (args.runs / name).mkdir(exist_ok=True)
        log = (args.runs / f"{name}.stdout.txt").open("a")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    for name, code in zip(names, codes, strict=True):
        print(f"{name}: exit {code}")


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _greedy_wer(model: str, dev: Path, hyps: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "mamba_asr", "eval", str(dev), "--model", model,
           "--strategy", "greedy", "--lm", "none", "--json", "--hyps", str(hyps),
           "--overwrite"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # the summary, then the JSON line


def evaluate(args: argparse.Namespace) -> None:
    dev = args.corpus / "dev" / "manifest.jsonl"
    report: dict[str, object] = {"teacher": {"model": TEACHER,
                                             **_greedy_wer(TEACHER, dev, args.runs / "t.jsonl")}}  # fmt: skip
    for name in RUNS_KD:
        run = args.runs / name
        if not (run / "metrics.csv").is_file():
            continue
        rows = _rows(run)
        train_rows = [r for r in rows if r["train_loss"]]
        valid = [r for r in rows if r["wer"]]
        tail = train_rows[-4:]  # the last 100 steps (log_every 25)
        entry: dict[str, object] = {
            "kd": RUNS_KD[name],
            "steps": int(train_rows[-1]["step"]),
            "epochs": len(valid),
            "valid_wer": [(int(r["step"]), float(r["wer"])) for r in valid],
            "train_loss_last100": sum(float(r["train_loss"]) for r in tail) / len(tail),
            "kd_loss_last100": (
                sum(float(r["kd_loss"]) for r in tail) / len(tail)
                if tail[0].get("kd_loss")
                else None
            ),  # fmt: skip
            "train_seconds": sum(w["seconds"] for w in json.loads((run / "wall.json").read_text())),
        }
        if (run / "model.pt").is_file():
            entry["model_pt"] = _greedy_wer(str(run / "model.pt"), dev, run / "hyps.jsonl")
        report[name] = entry
        print(name, json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


def table(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.out).read_text())
    t = data.pop("teacher")
    print(f"teacher {t['model']}: greedy WER {100 * t['wer']:.2f} % on dev\n")
    print(
        "| run | KD | steps | valid WER by epoch (%) | model.pt greedy WER (%) | train loss "
        "(last 100 steps) | KD loss | training s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, e in data.items():
        kd = e["kd"]
        kd_text = (f"{kd['target']}, W {kd['weight']:g}, T {kd['temperature']:g}" if kd
                   else "none")  # fmt: skip
        curve = " ".join(f"{100 * w:.1f}" for _, w in e["valid_wer"])
        final = f"{100 * e['model_pt']['wer']:.2f}" if "model_pt" in e else "-"
        kd_loss = f"{e['kd_loss_last100']:.3f}" if e["kd_loss_last100"] is not None else "-"
        print(
            f"| {name} | {kd_text} | {e['steps']} | {curve} | {final} | "
            f"{e['train_loss_last100']:.2f} | {kd_loss} | {e['train_seconds']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    for name, fn in (("train", train_all), ("one", one)):
        p = sub.add_parser(name)
        if name == "one":
            p.add_argument("name", choices=list(RUNS_KD))
        p.add_argument("corpus", type=Path)
        p.add_argument("runs", type=Path)
        p.add_argument("--epochs", type=int, default=8)
        p.add_argument("--deadline", type=float, default=time.time() + 1e9)
        p.add_argument("--teacher", default=TEACHER)
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
        if name == "train":
            p.add_argument("--only", nargs="+", choices=list(RUNS_KD))
        p.set_defaults(func=fn)
    p = sub.add_parser("evaluate")
    p.add_argument("corpus", type=Path)
    p.add_argument("runs", type=Path)
    p.add_argument("out")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("report")
    p.add_argument("out")
    p.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
