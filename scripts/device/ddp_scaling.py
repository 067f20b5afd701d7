"""Data-parallel training on 1 vs 2 GPUs: same global batch, loss curves, speed, ranks in sync.

    python3 scripts/device/ddp_scaling.py CORPUS OUT [--steps 150] [--batch-seconds 200]

For each recipe (the MCT transducer and the ConMamba CTC model), two runs over CORPUS/train:
- 1 GPU: batches of ``--batch-seconds`` of audio, two per optimizer step (grad_accum 2);
- 2 GPUs (torchrun, NCCL): one such batch per rank per step.
Both use the same global batch: the sampler deals batch 2k to rank 0 and 2k+1 to rank 1, the
very pair the 1-GPU run accumulates in step k, so the two loss curves should match up to
dropout/augmentation draws and rounding. Speed: seconds of audio trained per second of wall
time (the trainer's log windows after the first, which holds start-up; train.log also gives
the share of time each window waited for data). ``--profile``: every rank's steps 51-55 under
torch.profiler (RUN/profile/rank<r>.txt, .json). Sync: each rank's final weights (saved by
tests/helpers/rank_dump.py) must be equal. Writes OUT/ddp_scaling.json, a loss plot
OUT/ddp_loss.png and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "mct_small": (
        "hparams/Transducer/mct_small.yaml",
        ["train.warmup_steps=100", "train.lr=0.002"],
    ),
    "conmamba_ctc": (
        "hparams/CTC/conmamba_large.yaml",
        ["train.warmup_steps=100", "train.lr=0.001"],
    ),
}


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import mamba_asr.train
    from helpers.rank_dump import recording_ranks
    from mamba_asr.config import load_recipe

    overrides = list(RECIPES[args.recipe][1]) + [
        f"train.max_batch_seconds={args.batch_seconds}", f"train.grad_accum={args.accum}",
        f"train.log_every={args.log_every}", "train.num_workers=6", "train.epochs=100", "train.num_buckets=20",
        "train.checkpoint_every_steps=0",
    ]  # fmt: skip
    recipe = load_recipe(RECIPES[args.recipe][0], overrides)
    corpus = Path(args.corpus)
    with recording_ranks(Path(args.dump)):  # each rank's final weights: DUMP/rank<r>.pt
        result = mamba_asr.train.train(
            recipe, corpus / "train/manifest.jsonl", corpus / "dev/manifest.jsonl", args.run_dir,
            device=args.device, max_steps=args.steps, progress=False,
        )  # fmt: skip
    if result.rank == 0:
        Path(args.run_dir, "result.json").write_text(json.dumps({"throughput": result.throughput}))


def launch(args: argparse.Namespace, recipe: str, gpus: int, out: Path) -> dict:
    run = out / f"{recipe}_{gpus}gpu"
    steps = dict(item.split("=") for item in args.recipe_steps).get(recipe, args.steps)
    dump = out / f"{recipe}_{gpus}gpu_ranks"
    dump.mkdir(parents=True, exist_ok=True)
    common = [__file__, args.corpus, "--worker", "--recipe", recipe, "--run-dir", str(run),
              "--steps", str(steps), "--batch-seconds", str(args.batch_seconds),
              "--device", args.device, "--log-every", str(args.log_every),
              "--dump", str(dump)]  # fmt: skip
    if gpus == 1:
        cmd = [sys.executable, *common, "--accum", "2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={gpus}", *common, "--accum", "1"]  # fmt: skip
    env = dict(os.environ)
    if args.profile:  # steps 51-55 of every rank: run/profile/rank<r>.{json,txt}
        env["MAMBA_ASR_PROFILE"] = f"{run / 'profile'},50,5"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out / f"{recipe}_{gpus}gpu.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{recipe} on {gpus} GPU(s) failed")
    import torch

    with (run / "metrics.csv").open() as f:
        losses = {
            int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]
        }
    speeds = [s for _, s in json.loads((run / "result.json").read_text())["throughput"]]
    speeds = speeds[1:] or speeds  # the first window holds start-up
    dumps = [torch.load(p, map_location="cpu") for p in sorted(dump.glob("rank*.pt"))]
    diff = max(
        (d["model"][k].float() - dumps[0]["model"][k].float()).abs().max().item()
        for d in dumps for k in d["model"]
    )  # fmt: skip
    return {"losses": losses, "speed": statistics.median(speeds), "speeds": speeds,
            "rank_weight_max_diff": diff, "ranks": len(dumps)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--recipe-steps", nargs="*", default=[], metavar="RECIPE=STEPS",
                        help="other step counts per recipe")  # fmt: skip
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="torch.profiler on steps 51-55")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--recipe")
    parser.add_argument("--run-dir")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--dump", help="folder for each rank's final weights")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    report = {"gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
              "gpus": torch.cuda.device_count() if cuda else 0,
              "steps": args.steps, "batch_seconds_per_gpu": args.batch_seconds, "runs": {}}  # fmt: skip
    for recipe in args.recipes:
        one, two = launch(args, recipe, 1, args.out), launch(args, recipe, 2, args.out)
        common = sorted(set(one["losses"]) & set(two["losses"]))
        rel = [abs(one["losses"][s] - two["losses"][s]) / abs(one["losses"][s]) for s in common]
        report["runs"][recipe] = {"steps": max(one["losses"]),"1gpu": one, "2gpu": two, "scaling": two["speed"] / one["speed"],
                                  "loss_rel_diff_max": max(rel), "loss_rel_diff_mean": statistics.mean(rel)}  # fmt: skip
    (args.out / "ddp_scaling.json").write_text(json.dumps(report, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(report["runs"]), figsize=(6 * len(report["runs"]), 4))
        for ax, (recipe, r) in zip(
            list(getattr(axes, "flat", [axes])), report["runs"].items(), strict=True
        ):
            for key, style in (("1gpu", "-"), ("2gpu", "--")):
                steps = sorted(r[key]["losses"])
                ax.plot(steps, [r[key]["losses"][s] for s in steps], style,
                        label=f"{key[0]} GPU ({r[key]['speed']:.0f} s audio/s)")  # fmt: skip
            ax.set(title=recipe, xlabel="optimizer step", ylabel="training loss", yscale="log")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "ddp_loss.png", dpi=120)
    except ImportError:
        pass
    print(
        f"{report['gpus']} x {report['gpu']}, {args.steps} steps, {args.batch_seconds:.0f} s of audio per GPU batch"
    )
    print(
        f"{'recipe':14} {'1 GPU s/s':>10} {'2 GPU s/s':>10} {'scaling':>8} {'loss diff max':>14} {'mean':>7} {'rank diff':>10}"
    )
    for recipe, r in report["runs"].items():
        print(f"{recipe:14} {r['1gpu']['speed']:10.0f} {r['2gpu']['speed']:10.0f} {r['scaling']:8.2f}"
              f" {r['loss_rel_diff_max']:14.3%} {r['loss_rel_diff_mean']:7.2%} {r['2gpu']['rank_weight_max_diff']:10.2g}")  # fmt: skip


if __name__ == "__main__":
    main()
