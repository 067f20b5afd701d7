"""The ``mamba-asr`` command, run as ``python -m mamba_asr`` in a subprocess and in-process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mamba_asr import __version__
from mamba_asr.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MAMBA_ASR_DEVICE"}
    return subprocess.run(
        [sys.executable, "-m", "mamba_asr", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mamba-asr: error: ")
    for word in words:
        assert word in lines[0]


def test_info_prints_versions_device_and_backends():
    proc = run_cli("info", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"mamba-asr       {__version__}" in out
    assert torch.__version__ in out
    assert "device          cpu" in out
    assert "selective scan" in out
    assert "ref" in out
    assert "bundled models  mct-small-synth-en (24.6 MB, default)" in out


def test_check_passes_on_cpu():
    proc = run_cli("check", "--length", "64", "--device", "cpu", "--threads", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "streaming == full" in out
    assert "selective_scan_fn[" in out
    assert "FAIL" not in out
    assert "checks passed" in out.splitlines()[-2]
    assert "Traceback" not in proc.stderr


def test_bad_device_is_one_line_error_without_traceback():
    proc = run_cli("check", "--device", "nope")
    assert_one_line_error(proc, "'nope'", "available")


def test_bad_device_from_env_names_the_variable():
    proc = run_cli("info", env={"MAMBA_ASR_DEVICE": "tpu"})
    assert_one_line_error(proc, "MAMBA_ASR_DEVICE", "'tpu'")


def test_debug_flag_shows_traceback():
    proc = run_cli("--debug", "info", "--device", "nope")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mamba-asr: error: ")


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["check", "--length", "0", "--device", "cpu"], "length"),
        (["check", "--threads", "0", "--device", "cpu"], "--threads"),
        (["check", "--chunk", "-1", "--device", "cpu"], "chunk"),
    ],
)
def test_bad_sizes_exit_2_with_one_line(capsys, args, word):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("mamba-asr: error: ")
    assert word in err[0]


def test_usage_errors_exit_2():
    for argv in ([], ["nope"], ["check", "--length", "ten"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"mamba-asr {__version__}"
