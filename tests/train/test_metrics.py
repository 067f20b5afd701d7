"""metrics.csv across a resume, and the optional TensorBoard and plot."""

from __future__ import annotations

import csv
import logging
import sys

import pytest

from mamba_asr.train.metrics import METRIC_COLUMNS, MetricsLog


def read(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_resuming_drops_rows_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, resume_step=0)
    for step in (1, 2, 3):
        log.add(step, 1, train_loss=1.0 / step, lr=0.1)
    log.add(3, 1, valid_loss=0.5, wer=0.25, cer=0.125)
    log.close()
    rows = read(tmp_path / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS) and len(rows) == 4
    assert rows[3]["wer"] == "0.25" and rows[3]["train_loss"] == ""
    MetricsLog(tmp_path, resume_step=2).close()
    assert [r["step"] for r in read(tmp_path / "metrics.csv")] == ["1", "2"]
    with pytest.raises(ValueError, match="unknown metric"):
        MetricsLog(tmp_path, resume_step=2).add(3, 1, accuracy=1.0)


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path, resume_step=0, enabled=False)
    log.add(1, 1, train_loss=1.0)
    assert log.plot() is None and list(tmp_path.iterdir()) == []


def test_without_tensorboard_and_matplotlib_one_line_each(tmp_path, monkeypatch, caplog):
    for module in ("torch.utils.tensorboard", "matplotlib.figure",
                   "matplotlib.backends.backend_agg"):  # fmt: skip
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with caplog.at_level(logging.INFO, logger="mamba_asr.train.metrics"):
        log = MetricsLog(tmp_path, resume_step=0)
        log.add(1, 1, train_loss=1.0, lr=0.1)
        assert log.plot() is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("tensorboard is not installed" in m for m in messages) == 1
    assert sum("matplotlib is not installed" in m for m in messages) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_plot_and_events_when_installed(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional")
    log = MetricsLog(tmp_path, resume_step=0)
    for step in (1, 2):
        log.add(step, 1, train_loss=2.0 / step, lr=0.1)
    log.add(2, 1, valid_loss=0.8, wer=0.5, cer=0.25)
    assert log.plot() == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    log.close()
