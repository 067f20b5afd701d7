"""Training metrics: ``metrics.csv``, TensorBoard events and a plot of the curves.

``MetricsLog`` appends one row per logged training window and one per validation to
``<out_dir>/metrics.csv`` (columns ``METRIC_COLUMNS``, empty where a value does not apply). On a
resume it first drops the rows written after the checkpoint it resumes from (they would be
written again, identically, by the resumed run). TensorBoard events (``<out_dir>/tensorboard``)
are written when the ``tensorboard`` package is installed, and ``<out_dir>/curves.png`` is
drawn when ``matplotlib`` is; without them one INFO line says so and training goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

from mamba_asr.atomic import atomic_write, atomic_write_text

__all__ = ["METRIC_COLUMNS", "MetricsLog", "plot_curves"]

log = logging.getLogger(__name__)

# kd_loss: the knowledge-distillation term of training (train.kd), before its weight; the
# training loss train_loss is the student's own loss on the labels, without it; wer_heldout,
# cer_heldout: the held-out validation set's (train(..., heldout_manifest=), --valid-heldout)
METRIC_COLUMNS = ("step", "epoch", "train_loss", "lr", "valid_loss", "wer", "cer", "kd_loss",
                  "wer_heldout", "cer_heldout")  # fmt: skip


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class MetricsLog:
    """Rows of ``metrics.csv``, TensorBoard scalars and ``curves.png`` for one training run.

    ``resume_step``: the step training continues after; rows with a larger step are dropped
    (0 on a fresh start, which keeps nothing of an older file). ``enabled=False`` (DDP ranks
    other than 0) makes every method a no-op.
    """

    def __init__(self, out_dir: str | os.PathLike[str], resume_step: int, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.csv"
        self.plot_path = self.out_dir / "curves.png"
        self.enabled = enabled
        self._writer: Any = None
        if not enabled:
            return
        kept = [r for r in _read_rows(self.path) if int(r["step"]) <= resume_step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in METRIC_COLUMNS} for r in kept)
        atomic_write_text(self.path, text.getvalue())
        self._writer = _tensorboard_writer(self.out_dir / "tensorboard", resume_step + 1)

    def add(self, step: int, epoch: int, **values: float | None) -> None:
        """Append one row: ``step``, ``epoch`` and any of train_loss, lr, valid_loss, wer, cer,
        kd_loss, wer_heldout, cer_heldout (None: an empty cell)."""
        if not self.enabled:
            return
        unknown = set(values) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; allowed: {METRIC_COLUMNS}")
        row = {"step": step, "epoch": epoch, **values}
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow(
                {k: _format(row.get(k)) for k in METRIC_COLUMNS}
            )
        if self._writer is not None:
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    group = "train" if name in ("train_loss", "lr", "kd_loss") else "valid"
                    self._writer.add_scalar(f"{group}/{name}", value, step)
            self._writer.flush()

    def plot(self) -> Path | None:
        """Draw ``curves.png`` from ``metrics.csv``; None when matplotlib is missing."""
        if not self.enabled:
            return None
        return plot_curves(self.path, self.plot_path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tensorboard_writer(log_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        if r.get(key):
            steps.append(int(r["step"]))
            values.append(float(r[key]))
    return steps, values


def plot_curves(csv_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path | None:
    """Loss (train, valid) and error-rate (WER, CER) curves of a ``metrics.csv`` as a PNG.

    Returns the image's path, or None (with one INFO line) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return None
    rows = _read_rows(Path(csv_path))
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    losses, rates = fig.subplots(1, 2)
    for key, style in (("train_loss", "-"), ("valid_loss", "o-"), ("kd_loss", "--")):
        steps, values = _column(rows, key)
        if steps or key != "kd_loss":  # the KD curve only for a run with a teacher
            losses.plot(steps, values, style, label=key.replace("_", " "))
    losses.set(xlabel="step", ylabel="loss", title="loss")
    for key, label in (("wer", "WER"), ("cer", "CER"), ("wer_heldout", "WER held out"),
                       ("cer_heldout", "CER held out")):  # fmt: skip
        steps, values = _column(rows, key)
        if steps or not key.endswith("_heldout"):  # held-out curves only for a run with the set
            rates.plot(steps, [100 * v for v in values], "o-", label=label)
    rates.set(xlabel="step", ylabel="%", title="validation error rates")
    for ax in (losses, rates):
        ax.grid(alpha=0.3)
        ax.legend()
    out_path = Path(out_path)
    atomic_write(out_path, lambda f: fig.savefig(f, dpi=100, format="png"))
    return out_path
