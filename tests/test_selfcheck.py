"""mamba_asr.selfcheck: passes on healthy blocks and catches a broken one."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.cli import main
from mamba_asr.selfcheck import run_checks

CPU = torch.device("cpu")


def test_all_checks_pass_with_a_ragged_last_chunk():
    report = run_checks(CPU, length=70, batch=2, d_model=16, n_layers=2, chunk=16)
    assert report.passed, report.results
    names = [r.name for r in report.results]
    assert any(name.startswith("streaming") for name in names)
    assert any(name.startswith("padded batch") for name in names)
    assert any(name.startswith("selective_scan_fn[") for name in names)
    for r in report.results:
        assert r.seconds >= 0
        if r.error is not None:
            assert r.error <= r.tol


def test_streaming_that_forgets_its_state_fails(monkeypatch, capsys):
    mamba = pytest.importorskip("mamba_asr.modules.mamba")
    forward_chunk = mamba.Mamba.forward_chunk

    def forgetful(self, x, state):
        return forward_chunk(self, x, self.init_state(x.shape[0]))

    monkeypatch.setattr(mamba.Mamba, "forward_chunk", forgetful)
    report = run_checks(CPU, length=48, d_model=16, n_layers=1, chunk=16)
    assert not report.passed
    failed = [r.name for r in report.results if not r.passed]
    assert len(failed) == 1 and failed[0].startswith("streaming")

    assert main(["check", "--device", "cpu", "--length", "48", "--chunk", "16"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "checks passed" in out
