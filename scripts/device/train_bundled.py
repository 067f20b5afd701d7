"""Train the bundled streaming transducer on a synthetic corpus, up to a wall-clock deadline.

    torchrun --standalone --nproc_per_node=2 scripts/device/train_bundled.py CORPUS RUN \
        --deadline UNIX_TIME [--init MODEL.pt --lr LR --warmup STEPS] [--set KEY=VALUE ...]
    python3 scripts/device/train_bundled.py --export RUN MODEL.pt

CORPUS holds train/ and dev/ from scripts/device/synth_corpus.py. The recipe is
hparams/Transducer/mct_small.yaml with the overrides in OVERRIDES (a short schedule: the run is
stopped by the deadline, whichever epoch it is in). ``--export`` writes the average of RUN's best
validated checkpoints as a half-precision ASR bundle (the file the package ships).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPE = "hparams/Transducer/mct_small.yaml"
OVERRIDES = [
    "train.lr=0.002",
    "train.warmup_steps=300",
    "train.max_batch_seconds=200",
    "train.num_buckets=30",
    "train.num_workers=10",
    "train.epochs=100",
    "train.log_every=25",
    "train.checkpoint_every_steps=0",
    "model.transducer.aux_ctc_weight=0.2",
]


def export(run: Path, out: Path) -> None:
    """The model of RUN as the package ships it: the average of the best validated checkpoints
    kept (``train.average`` of them, as ``mamba-asr train`` ends), in half precision."""
    from mamba_asr.asr import ASR
    from mamba_asr.config import RecipeConfig, from_dict
    from mamba_asr.text.tokenizer import load_tokenizer
    from mamba_asr.train import list_checkpoints, load_checkpoint
    from mamba_asr.train.checkpoints import average_checkpoints

    newest = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(newest)
    recipe = from_dict(RecipeConfig, state["config"], "config")
    best = state["progress"]["best"][: recipe.train.average]
    files = [run / "checkpoints" / e["file"] for e in best]
    files = [f for f in files if f.is_file()] or [newest]
    asr = ASR.from_recipe(recipe, load_tokenizer(run / "tokenizer"))
    asr.load_state_dict(average_checkpoints(files))
    asr.save(out, half=True)
    info = {"checkpoints": [f.name for f in files], "best": best,
            "step": state["progress"]["step"], "epoch": state["progress"]["epoch"],
            "bytes": out.stat().st_size, "params": sum(p.numel() for p in asr.parameters()),
            "valid": state.get("valid")}  # fmt: skip
    print(json.dumps(info))
    (out.parent / "export.json").write_text(json.dumps(info, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("--deadline", type=float, help="stop training at this time.time()")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--init", help="go on from this model file (train.init_from)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more recipe overrides, applied last")  # fmt: skip
    args = parser.parse_args()
    if args.export:
        return export(args.corpus, args.run)
    from mamba_asr.config import load_recipe
    from mamba_asr.train import train

    more = [f"train.init_from={args.init}"] if args.init else []
    more += [f"train.lr={args.lr}"] if args.lr else []
    more += [f"train.warmup_steps={args.warmup}"] if args.warmup else []
    recipe = load_recipe(RECIPE, OVERRIDES + more + args.set)
    heldout = args.corpus / "dev_heldout/manifest.jsonl"  # synth_corpus.py --held-out-dev
    result = train(recipe, args.corpus / "train/manifest.jsonl", args.corpus / "dev/manifest.jsonl",
                   args.run, device=args.device, progress=False,
                   max_seconds=max(args.deadline - time.time(), 1.0),
                   heldout_manifest=heldout if heldout.is_file() else None)  # fmt: skip
    if result.rank == 0:
        speeds = [s for _, s in result.throughput[1:]] or [0.0]
        print(f"steps {result.step}, epochs done {result.epochs_done}, best WER {result.best_wer}, "
              f"median {sorted(speeds)[len(speeds) // 2]:.0f} s of audio per second")  # fmt: skip


if __name__ == "__main__":
    main()
