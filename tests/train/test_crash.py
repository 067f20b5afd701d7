"""Killing training with SIGKILL, also in the middle of a checkpoint write, then resuming.

Each test runs ``python -m mamba_asr train`` on the tiny recipe in a subprocess (with checkpoint
saves slowed down by tests/helpers/slow_checkpoints.py), kills it with SIGKILL at a chosen moment, checks what is on disk, resumes with the same command and checks
that the finished run equals an uninterrupted one (``reference_run``), step for step.
"""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamba_asr.train import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL (POSIX)")


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def start(helpers, recipe_file, corpus, out, slow_save: float) -> subprocess.Popen:
    """Training whose checkpoint saves sleep ``slow_save`` seconds before the rename."""
    train = helpers.train_args(recipe_file, corpus, out)
    args = helpers.helper_command("slow_checkpoints", str(slow_save), *train)
    return subprocess.Popen(args, env=helpers.subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)  # fmt: skip


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def resume_to_the_end(helpers, recipe_file, corpus, out) -> str:
    args = helpers.cli_command(*helpers.train_args(recipe_file, corpus, out))
    proc = subprocess.run(args, env=helpers.subprocess_env(), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "done after 12 steps" in proc.stdout
    return proc.stderr


def assert_equals_reference(out: Path, reference: Path) -> None:
    def table(run):
        with (run / "metrics.csv").open() as f:
            return list(csv.DictReader(f))

    assert table(out) == table(reference)
    ours = load_checkpoint(out / "checkpoints" / "step-00000012.pt")["model"]
    theirs = load_checkpoint(reference / "checkpoints" / "step-00000012.pt")["model"]
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def assert_every_checkpoint_loads(folder: Path) -> list[int]:
    steps = []
    for path in list_checkpoints(folder):
        state = load_checkpoint(path)  # weights_only=True
        assert path.name == f"step-{state['progress']['step']:08d}.pt"
        steps.append(state["progress"]["step"])
    return steps


def test_sigkill_mid_epoch_then_resume(tmp_path, helpers, recipe_file, corpus, reference_run):
    out = tmp_path / "run"
    first = out / "checkpoints" / "step-00000002.pt"
    # a slow save (0.3 s) keeps the run going long enough to be killed during the epoch
    proc = start(helpers, recipe_file, corpus, out, slow_save=0.3)
    wait_for(proc, first.exists, "the first checkpoint")
    kill(proc)
    steps = assert_every_checkpoint_loads(out / "checkpoints")
    assert steps and steps[-1] < 12
    newest = steps[-1]
    log = resume_to_the_end(helpers, recipe_file, corpus, out)
    assert f"resumed at step {newest}, epoch {newest // 4 + 1}, batch {newest % 4} of 4" in log
    assert_equals_reference(out, reference_run)
    assert_every_checkpoint_loads(out / "checkpoints")


def test_sigkill_during_a_checkpoint_write_leaves_no_broken_checkpoint(
    tmp_path, helpers, recipe_file, corpus, reference_run
):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    first = folder / "step-00000002.pt"

    def temp_files() -> list[Path]:
        return [p for p in folder.iterdir() if ".tmp-" in p.name] if folder.is_dir() else []

    # every save sleeps 1 s between writing the temporary file and renaming it
    proc = start(helpers, recipe_file, corpus, out, slow_save=1.0)
    wait_for(proc, first.exists, "the first checkpoint")
    wait_for(proc, lambda: bool(temp_files()), "the second checkpoint's write")
    kill(proc)
    leftovers = temp_files()
    assert [p.name for p in leftovers] == [f"step-00000004.pt.tmp-{proc.pid}"]
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000002.pt"]
    assert assert_every_checkpoint_loads(folder) == [2]
    log = resume_to_the_end(helpers, recipe_file, corpus, out)
    assert "removed 1 unfinished checkpoint file(s)" in log
    assert "resumed at step 2, epoch 1, batch 2 of 4" in log
    assert not temp_files()
    assert_equals_reference(out, reference_run)


def test_a_second_run_on_the_folder_is_refused_and_a_killed_runs_lock_taken_over(
    tmp_path, helpers, recipe_file, corpus, reference_run, capsys
):
    from mamba_asr.cli import main

    out = tmp_path / "run"
    proc = start(helpers, recipe_file, corpus, out, slow_save=0.5)
    wait_for(proc, (out / "checkpoints" / "step-00000002.pt").exists, "the first checkpoint")
    rows = (out / "metrics.csv").read_text()
    assert main(helpers.train_args(recipe_file, corpus, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamba-asr: error: "), err
    assert f"in use by process {proc.pid} on {socket.gethostname()}" in err[0]
    assert (out / "metrics.csv").read_text().startswith(rows)  # nothing written by the refused run
    kill(proc)
    assert json.loads((out / "train.lock").read_text())["pid"] == proc.pid  # left behind
    log = resume_to_the_end(helpers, recipe_file, corpus, out)
    assert f"taking over the lock of process {proc.pid} on this host" in log
    assert not (out / "train.lock").exists()
    assert_equals_reference(out, reference_run)  # no duplicate or interleaved rows
