"""Plot the bundled model's training (all phases) from docs/results/bundled_metrics_phase*.csv.

Each phase validates on its own corpus's dev set (0.3 h of held-out sentences); phase 3 trained
with lighter SpecAugment (4 time masks instead of 10), so its training loss sits lower; phase 4
as phase 3 on another corpus.

python scripts/synth/plot_bundled.py   # writes docs/img/bundled_training.png
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parents[2]
fig, (loss_ax, wer_ax) = plt.subplots(1, 2, figsize=(11, 4))
offset = 0
LABELS = {
    1: "1: 50 h corpus, 200 s/GPU batches",
    2: "2: + 20 h new corpus (init_from 1)",
    3: "3: + 40 h new corpus (init_from 2), 600 s/GPU batches",
    4: "4: + 40 h new corpus (init_from 3), as 3",
}
for phase in LABELS:
    with (root / f"docs/results/bundled_metrics_phase{phase}.csv").open() as f:
        rows = list(csv.DictReader(f))
    train = [(offset + int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    valid = [(offset + int(r["step"]), 100 * float(r["wer"])) for r in rows if r["wer"]]
    label = LABELS[phase]
    loss_ax.plot(*zip(*train, strict=True), label=label)
    wer_ax.plot(*zip(*valid, strict=True), "o-", label=label)
    offset = train[-1][0]
loss_ax.set(xlabel="optimizer step (2 GPUs)", ylabel="training loss per utterance", yscale="log")
wer_ax.set(xlabel="optimizer step (2 GPUs)", ylabel="validation WER % (greedy)")
for ax in (loss_ax, wer_ax):
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle("mct-small-synth-en: streaming MCT on synthetic speech, 2 x H100")
fig.tight_layout()
fig.savefig(root / "docs/img/bundled_training.png", dpi=110)
