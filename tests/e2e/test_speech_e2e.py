"""End to end on real (synthesized) speech: tiny ConMamba-CTC and ConMamba seq2seq models overfit
12 sentences spoken by espeak-ng to WER <= 5 %, through the same commands a user runs; a run
stopped at a checkpoint and resumed continues at the same step with the same losses."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_asr.evaluate import hypotheses_name

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)

TINY = [
    "model.d_model=96", "model.nhead=4", "model.num_encoder_layers=2", "model.d_ffn=192",
    "model.kernel_size=15", "model.frontend.channels=[8, 8]", "model.dropout=0.0",
    "data.speed_perturb=[]", "data.specaugment.enabled=false", "train.lr=0.003",
    "train.warmup_steps=20", "train.epochs=28", "train.max_batch_seconds=12",
    "train.num_workers=0", "train.log_every=1", "train.keep_best=1", "train.average=1",
    "train.checkpoint_every_steps=60", "train.weight_decay=0.0", "train.grad_accum=1",
]  # fmt: skip
SEQ2SEQ = [
    "model.vocab_size=31", "model.kind=seq2seq", "model.num_decoder_layers=1", "tokenizer.kind=char"
]  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_asr", *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {
            int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]
        }


@pytest.mark.parametrize(
    "recipe, extra, strategy",
    [
        ("hparams/CTC/conmamba_large.yaml", [], "beam"),
        ("hparams/S2S/conmamba_small.yaml", SEQ2SEQ, "beam"),
    ],
    ids=["conmamba-ctc", "conmamba-seq2seq"],
)
def test_overfits_spoken_sentences(corpus, tmp_path, recipe, extra, strategy):
    run = tmp_path / "run"
    train = ["train", recipe, "--train", str(corpus), "--valid", str(corpus), "--out", str(run)]
    cli(*train, *sets(TINY + extra))
    out = cli("eval", str(corpus), "--model", str(run / "model.pt"), "--strategy", strategy,
              "--beam-size", "4", "--json").stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    assert result["utterances"] == 12 and result["audio_seconds"] > 10
    assert result["wer"] <= 0.05, out
    hyps_file = run / hypotheses_name(corpus)  # beside the model, named after the set
    hyps = [json.loads(line) for line in hyps_file.read_text().splitlines()]
    assert len(hyps) == 12 and all(h["ref"] and "hyp" in h for h in hyps)


def test_resumed_run_continues_with_the_same_losses(corpus, tmp_path):
    """Uninterrupted to step 66 vs stopped at the step-60 checkpoint and resumed: same losses."""
    common = ["--train", str(corpus), "--valid", str(corpus)]
    recipe = "hparams/CTC/conmamba_large.yaml"
    full, split = tmp_path / "full", tmp_path / "split"
    cli("train", recipe, *common, "--out", str(full), "--max-steps", "66", *sets(TINY))
    cli("train", recipe, *common, "--out", str(split), "--max-steps", "60", *sets(TINY))
    assert max(losses(split)) == 60
    cli("train", recipe, *common, "--out", str(split), "--max-steps", "66", *sets(TINY))
    a, b = losses(full), losses(split)
    assert sorted(b) == sorted(a) and max(a) == 66
    for step in range(61, 67):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
