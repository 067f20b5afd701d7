"""Train the research recipes side by side on one synthetic corpus and compare them.

    python3 scripts/device/research_compare.py train CORPUS RUNS --deadline UNIX_TIME \
        [--steps 1000] [--only NAME ...]
    python3 scripts/device/research_compare.py evaluate CORPUS RUNS OUT.json
    python3 scripts/device/research_compare.py timing CORPUS RUNS OUT.json
    python3 scripts/device/research_compare.py report OUT.json [--runs RUNS] [--plot PNG]

CORPUS comes from ``scripts/device/synth_corpus.py --held-out-dev`` (train/, dev/ of the
training voices, dev_heldout/ of voice families never heard in training). RUNS gets one run
folder per entry of RECIPES, all trained at once on one GPU, each with the same data order,
batch (``--set`` values in COMMON), schedule and number of optimizer steps.

``train``: every run trains to the step count S of the first call's ``--steps`` (kept in
RUNS/plan.json; ``--retarget`` replaces it by this call's ``--steps``), stopping at
``--deadline`` (seconds since the epoch) if that comes first.
Calling it again on the same RUNS resumes each run where it stopped (the trainer's resume is
exact), until all have S steps. Under the shared load of five runs on one H200 with 16 CPU
cores, the slowest (ConMamba CTC large) trains about 2.2 steps per second of 400 s batches:
plan S from that. (A first version measured speeds over the first 50 steps and planned from
them: those steps run while the other runs are still starting, and it planned for twice the
speed the runs then had.)

``evaluate``: the final weights of each run (step S; no checkpoint averaging, so every model is
judged at the same step) on dev/ (seen voices) and dev_heldout/ (unseen families): CTC greedy
(best path) and CTC prefix beam search (10) for every model (for the S2S models on their CTC
head), and for the S2S models joint CTC/attention beam search (10, CTC weight 0.4, as the
recipes decode). One process per run, on the GPU.

``timing``: each recipe alone on the GPU: median ms per optimizer step (forward, backward,
AdamW; bf16 autocast) on one fixed batch of ``--batch-seconds`` of training audio, and its peak
memory.

``report`` (anywhere, from the JSON and the runs' metrics.csv): a Markdown table and a plot of
the training curves.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "conformer_s2s_small": "hparams/S2S/conformer_small.yaml",
    "conmamba_s2s_small": "hparams/S2S/conmamba_small.yaml",
    "conmambamamba_s2s_small": "hparams/S2S/conmambamamba_small.yaml",
    "conformer_ctc_large": "hparams/CTC/conformer_large.yaml",
    "conmamba_ctc_large": "hparams/CTC/conmamba_large.yaml",
}
# The same schedule, batch and data order for every run: the recipes' own schedules (warm-up
# of thousands of steps, 4-8 accumulated batches of 500-850 s) are for 960 h of LibriSpeech.
# A 400-step warm-up left the Conformer CTC large and every S2S small model on a plateau;
# with 1500 all learn (docs/benchmarks.md, "Research recipes side by side").
COMMON = [
    "train.lr=0.001", "train.warmup_steps=1500", "train.grad_accum=1",
    "train.max_batch_seconds=400", "train.num_buckets=30", "train.num_workers=3",
    "train.epochs=1000", "train.log_every=25", "train.checkpoint_every_steps=0",
    "train.keep_best=3", "train.average=3", "train.seed=1234",
]  # fmt: skip
# 5000 pieces are for 960 h; a corpus of tens of hours gets 500 (as icefall's 100 h recipes)
S2S = ["model.vocab_size=500"]
HELD_OUT = {  # the families synth_corpus.py --held-out leaves out of training
    "flite (engine)": ("flite:*",),
    "espeak-ng en-gb-scotland (accent)": ("espeak-ng:en-gb-scotland+*",),
    "espeak-ng m7, f4 (variants)": ("espeak-ng:*+m7", "espeak-ng:*+f4"),
}
HELD_OUT_PATTERNS = [p for ps in HELD_OUT.values() for p in ps]
SETS = {"seen": "dev", "held-out": "dev_heldout"}


def overrides(name: str, extra: list[str] | None = None) -> list[str]:
    return COMMON + (S2S if "_s2s_" in name else []) + list(extra or [])


def recipe_of(name: str, extra: list[str] | None = None):
    from mamba_asr.config import load_recipe

    return load_recipe(ROOT / RECIPES[name], overrides(name, extra))


# --- training ------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """One run, in its own process: train to --max-steps or --max-seconds, then record."""
    import torch

    from mamba_asr.train import train

    corpus, run = Path(args.corpus), Path(args.runs) / args.name
    result = train(recipe_of(args.name, args.set), corpus / "train/manifest.jsonl",
                   corpus / "dev/manifest.jsonl", run, device=args.device, max_steps=args.max_steps,
                   max_seconds=args.max_seconds, progress=False)  # fmt: skip
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    record = {
        "step": result.step,
        "epochs_done": result.epochs_done,
        "throughput": result.throughput,
        "best_wer": result.best_wer,
        "peak_gib": peak,
    }
    (run / f"result_{result.step}.json").write_text(json.dumps(record))


def launch_all(args: argparse.Namespace, names: list[str], max_steps: int) -> dict[str, dict]:
    """Every run in its own process at once (one GPU); returns each run's record."""
    runs = Path(args.runs)
    left = max(args.deadline - time.time(), 1.0)
    procs = {}
    for name in names:
        (runs / name).mkdir(parents=True, exist_ok=True)
        log = open(runs / name / "stdout.txt", "a")  # noqa: SIM115 (closed after the wait)
        cmd = [sys.executable, __file__, "worker", args.corpus, args.runs, "--name", name,
               "--max-steps", str(max_steps), "--max-seconds", f"{left:.0f}",
               "--device", args.device, "--set", *args.set]  # fmt: skip
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    records = {}
    for name, (proc, log) in procs.items():
        proc.wait()
        log.close()
        done = sorted((runs / name).glob("result_*.json"), key=lambda p: int(p.stem[7:]))
        records[name] = json.loads(done[-1].read_text()) if done else {"step": 0}
        print(f"{name}: exit {proc.returncode}, step {records[name]['step']}", flush=True)
    failed = [n for n, (proc, _) in procs.items() if proc.returncode]
    if failed:
        tails = {n: (runs / n / "stdout.txt").read_text().strip().splitlines()[-1] for n in failed}
        sys.exit(f"runs failed: {tails}")
    return records


def steps_per_second(name: str, record: dict, corpus: Path, extra: list[str]) -> float:
    """Optimizer steps per second from the trainer's speed (audio seconds per second) and the
    epoch's audio per batch; the first log window (start-up) left out."""
    from mamba_asr.data.batching import DynamicBatchSampler
    from mamba_asr.data.manifest import read_manifest

    cfg = recipe_of(name, extra).train
    durations = [u.duration for u in read_manifest(corpus / "train/manifest.jsonl")]
    batches = len(DynamicBatchSampler(durations, cfg.max_batch_seconds, cfg.num_buckets,
                                      shuffle=True, seed=cfg.seed))  # fmt: skip
    speeds = [s for _, s in record["throughput"][1:]] or [s for _, s in record["throughput"]]
    return statistics.median(speeds) / (sum(durations) / batches)


def train_all(args: argparse.Namespace) -> None:
    runs, corpus = Path(args.runs), Path(args.corpus)
    names = args.only or list(RECIPES)
    plan_file = runs / "plan.json"
    if not plan_file.exists():
        runs.mkdir(parents=True, exist_ok=True)
        plan = {"steps": args.steps, "overrides": {n: overrides(n, args.set) for n in names}}
        plan_file.write_text(json.dumps(plan, indent=1))
    plan = json.loads(plan_file.read_text())
    if args.retarget and plan["steps"] != args.steps:
        # a later call moves the common target (e.g. down to a step every run can reach in the
        # time left, so that all are evaluated at the same step); the runs resume as before
        print(f"target moved from step {plan['steps']} to {args.steps}", flush=True)
        plan["steps"] = args.steps
        plan_file.write_text(json.dumps(plan, indent=1))
    records = launch_all(args, names, plan["steps"])
    rates = {
        n: steps_per_second(n, r, corpus, args.set)
        for n, r in records.items()
        if r.get("throughput")
    }
    print("steps per second:", {n: round(r, 2) for n, r in rates.items()})
    done = all(r["step"] >= plan["steps"] for r in records.values())
    print(
        "all runs done"
        if done
        else f"not done yet: { {n: r['step'] for n, r in records.items()} }; call again to resume"
    )


# --- evaluation ----------------------------------------------------------------------------


def final_model(run: Path, device: str):
    """The run's newest checkpoint as an ASR bundle on the GPU."""
    from mamba_asr.asr import ASR
    from mamba_asr.config import RecipeConfig, from_dict
    from mamba_asr.text.tokenizer import load_tokenizer
    from mamba_asr.train import list_checkpoints, load_checkpoint
    from mamba_asr.train.checkpoints import average_checkpoints

    newest = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(newest)
    recipe = from_dict(RecipeConfig, state["config"], "config")
    asr = ASR.from_recipe(recipe, load_tokenizer(run / "tokenizer"))
    asr.load_state_dict(average_checkpoints([newest]))
    return asr.to(device).eval(), state["progress"]["step"]


def searches(name: str) -> dict:
    """search name -> (decoding options, whether it decodes the model's CTC head alone)."""
    from mamba_asr.decode import DecodingOptions

    out = {
        "ctc_greedy": (DecodingOptions(strategy="greedy", lm=None), True),
        "ctc_beam": (DecodingOptions(strategy="beam", beam_size=10, lm=None), True),
    }
    if "_s2s_" in name:
        out["joint_beam"] = (
            DecodingOptions(strategy="beam", beam_size=10, ctc_weight=0.4, lm=None),
            False,
        )
    return out


def ctc_view(model):
    """A seq2seq model's front end, encoder and CTC head as a CTCModel (the same weights), so
    that its CTC decodes are the CTC models' own searches (best path; prefix beam search)."""
    from mamba_asr.models.ctc import CTCModel
    from mamba_asr.models.seq2seq import Seq2SeqModel

    if not isinstance(model, Seq2SeqModel):
        return model
    view = CTCModel(model.frontend, model.encoder, model.ctc_lin.in_features, model.vocab_size,
                    model.blank, device="meta")  # fmt: skip
    view.ctc_lin = model.ctc_lin
    return view


def group_of(voice: str) -> str:
    for family, patterns in HELD_OUT.items():
        if any(fnmatch.fnmatchcase(voice, p) for p in patterns):
            return family
    return "seen"


def evaluate_one(args: argparse.Namespace) -> None:
    """One run's WER on both dev sets with each of its searches (own process)."""
    from mamba_asr.evaluate import evaluate, load_test_set
    from mamba_asr.text import error_rates

    run = Path(args.runs) / args.name
    asr, step = final_model(run, args.device)
    out = {"step": step, "params": sum(p.numel() for p in asr.model.parameters())}
    for set_name, folder in SETS.items():
        manifest = Path(args.corpus) / folder / "manifest.jsonl"
        voices = {
            json.loads(x)["id"]: json.loads(x)["voice"] for x in manifest.read_text().splitlines()
        }
        utts = load_test_set(manifest)
        for search, (options, ctc_only) in searches(args.name).items():
            hyps_path = run / f"hyps_{set_name}_{search}.jsonl"
            full = asr.model
            asr.model = ctc_view(full) if ctc_only else full
            try:
                r = evaluate(asr, utts, hyps_path, options, batch_seconds=300)
            finally:
                asr.model = full
            hyps = [json.loads(x) for x in hyps_path.read_text().splitlines()]
            groups: dict[str, list] = {}
            for h in hyps:
                groups.setdefault(group_of(voices[h["id"]]), []).append(h)
            by_group = {g: error_rates([h["ref"] for h in hs], [h["hyp"] for h in hs]).wer
                        for g, hs in groups.items()}  # fmt: skip
            out[f"{set_name}/{search}"] = {"wer": r.wer, "cer": r.cer, "utterances": r.utterances,
                                           "decode_s": r.decode_seconds, "groups": by_group}  # fmt: skip
            print(f"{args.name} {set_name} {search}: WER {100 * r.wer:.2f}", flush=True)
    (run / "eval.json").write_text(json.dumps(out, indent=1))


def evaluate_all(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    names = [n for n in (args.only or RECIPES) if (runs / n / "checkpoints").is_dir()]
    procs = [subprocess.Popen([sys.executable, __file__, "evaluate-one", args.corpus, args.runs,
                               "--name", n, "--device", args.device]) for n in names]  # fmt: skip
    for p in procs:
        p.wait()
    merge(args, "eval.json", "eval")


def merge(args: argparse.Namespace, file: str, key: str) -> None:
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    for name in RECIPES:
        path = Path(args.runs) / name / file
        if path.exists():
            report.setdefault(name, {})[key] = json.loads(path.read_text())
    plan = Path(args.runs) / "plan.json"
    if plan.exists():
        report["plan"] = json.loads(plan.read_text())
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


# --- timing --------------------------------------------------------------------------------


def timing(args: argparse.Namespace) -> None:
    """Each recipe alone: ms per optimizer step and peak memory on one fixed batch."""
    import torch

    from mamba_asr.data.dataset import AsrDataset, collate
    from mamba_asr.data.manifest import read_manifest
    from mamba_asr.text.tokenizer import load_tokenizer

    utts = read_manifest(Path(args.corpus) / "train/manifest.jsonl")
    utts = sorted(utts, key=lambda u: u.duration)[len(utts) // 2 :]  # the longer half
    results = {}
    for name in args.only or RECIPES:
        run = Path(args.runs) / name
        if not (run / "tokenizer").is_dir():
            continue
        recipe = recipe_of(name, args.set)
        tok = load_tokenizer(run / "tokenizer")
        batch, total = [], 0.0
        for u in utts:
            if total + u.duration > args.batch_seconds:
                break
            batch.append(u)
            total += u.duration
        data = AsrDataset(batch, tok, recipe.data.sample_rate, (1.0,), 0)
        results[name] = time_steps(recipe, tok, collate([data[i] for i in range(len(batch))]), args)
        results[name]["batch_seconds"] = total
        print(f"{name}: {results[name]}", flush=True)
        cuda = torch.device(args.device).type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
    for name, r in results.items():
        (Path(args.runs) / name / "timing.json").write_text(json.dumps(r))
    merge(args, "timing.json", "timing")


def time_steps(recipe, tok, batch, args: argparse.Namespace) -> dict:
    """Median ms per optimizer step of a fresh model on ``batch`` (after 5 warm-up steps) and
    the peak memory (CUDA only)."""
    import torch

    from mamba_asr.asr import ASR
    from mamba_asr.device import autocast
    from mamba_asr.train.schedules import build_optimizer

    b = batch.to(args.device)
    torch.manual_seed(0)
    asr = ASR.from_recipe(recipe, tok, device=args.device).train()
    cuda = torch.device(args.device).type == "cuda"
    opt = build_optimizer(asr, recipe.train)

    def step() -> None:
        with autocast(args.device):  # bf16 on CUDA
            out = asr(b.waves, b.wave_lengths, b.targets, b.target_lengths)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            step()
            times.append(1000 * (time.perf_counter() - t0))
    return {"ms_per_step": statistics.median(times), "utterances": len(b),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "params": sum(p.numel() for p in asr.model.parameters())}  # fmt: skip


# --- report --------------------------------------------------------------------------------

LABELS = {
    "conformer_s2s_small": "Conformer S2S small", "conmamba_s2s_small": "ConMamba S2S small",
    "conmambamamba_s2s_small": "ConMambaMamba S2S small",
    "conformer_ctc_large": "Conformer CTC large", "conmamba_ctc_large": "ConMamba CTC large",
}  # fmt: skip


def report(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.results).read_text())
    cols = [("seen", "ctc_greedy"), ("seen", "ctc_beam"), ("seen", "joint_beam"),
            ("held-out", "ctc_greedy"), ("held-out", "ctc_beam"), ("held-out", "joint_beam")]  # fmt: skip
    print("| model | params | steps | " + " | ".join(f"{s} {d}" for s, d in cols)
          + " | ms/step | peak GiB |")  # fmt: skip
    print("|---" * (len(cols) + 5) + "|")
    for name in RECIPES:
        if name not in data:
            continue
        ev, tm = data[name].get("eval", {}), data[name].get("timing", {})
        wers = [f"{100 * ev[f'{s}/{d}']['wer']:.1f}" if f"{s}/{d}" in ev else "-" for s, d in cols]
        print(f"| {LABELS[name]} | {ev.get('params', tm.get('params', 0)) / 1e6:.1f} M | "
              f"{ev.get('step', '-')} | " + " | ".join(wers)
              + f" | {tm.get('ms_per_step') or float('nan'):.0f} | {tm.get('peak_gib') or float('nan'):.2f} |")  # fmt: skip
    for name in RECIPES:
        ev = data.get(name, {}).get("eval", {})
        for key, r in ev.items():
            if isinstance(r, dict) and key.startswith("held-out"):
                parts = ", ".join(f"{g} {100 * w:.1f}" for g, w in sorted(r["groups"].items()))
                print(f"{LABELS[name]} {key}: {parts}")
    if args.runs and args.plot:
        plot(Path(args.runs), Path(args.plot))


def plot(runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_valid, ax_wer) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name in RECIPES:
        path = runs / name / "metrics.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(path.open()))
        train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
        wer = [(int(r["step"]), 100 * float(r["wer"])) for r in rows if r.get("wer")]
        valid = [(int(r["step"]), float(r["valid_loss"])) for r in rows if r.get("valid_loss")]
        style = "-" if "conformer" in name else ("--" if "conmambamamba" not in name else ":")
        if train:
            ax_loss.plot(*zip(*train, strict=True), style, label=LABELS[name])
        if wer:
            ax_wer.plot(*zip(*wer, strict=True), style, marker="o", ms=3, label=LABELS[name])
            ax_valid.plot(*zip(*valid, strict=True), style, marker="o", ms=3, label=LABELS[name])
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", yscale="log",
                title="training loss (per batch, each model's own loss)")  # fmt: skip
    ax_valid.set(xlabel="optimizer step", ylabel="validation loss", yscale="log",
                 title="validation loss, seen voices")  # fmt: skip
    ax_wer.set(xlabel="optimizer step", ylabel="WER % (validation, greedy)",
               title="validation WER, seen voices", ylim=(0, 120))  # fmt: skip
    for ax in (ax_loss, ax_valid, ax_wer):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("train", "worker", "evaluate", "evaluate-one", "timing"):
        p = sub.add_parser(cmd)
        p.add_argument("corpus")
        p.add_argument("runs")
        if cmd in ("evaluate", "timing"):
            p.add_argument("out")
        p.add_argument("--only", nargs="+", choices=list(RECIPES))
        p.add_argument("--name", choices=list(RECIPES))
        p.add_argument("--deadline", type=float, default=time.time() + 3600)
        p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run")
        p.add_argument(
            "--retarget", action="store_true",
            help="train: replace the step count kept from the first call by --steps",
        )  # fmt: skip
        p.add_argument("--max-steps", type=int)
        p.add_argument("--max-seconds", type=float)
        p.add_argument("--batch-seconds", type=float, default=400.0)
        p.add_argument("--repeats", type=int, default=20)
        p.add_argument("--device", default="cuda")
        p.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="more recipe overrides for every run (the same on every call)",
        )
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--runs")
    p.add_argument("--plot")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"train": train_all, "worker": worker, "evaluate": evaluate_all,
     "evaluate-one": evaluate_one, "timing": timing, "report": report}[args.command](args)  # fmt: skip


if __name__ == "__main__":
    main()
