"""DDP on the CPU (gloo): torchrun with two processes, and two one-process "nodes".

Each rank dumps its final weights and the ids of the utterances it trained on
(tests/helpers/rank_dump.py). The ranks trained on different batches, so they can only end
with identical weights if their gradients were averaged at every step.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.feature_stores import corpus_store
from helpers.recipes import RECIPES, tiny_overrides
from mamba_asr.asr import ASR
from mamba_asr.text import CharTokenizer
from mamba_asr.train import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

STEPS = 6  # 4 batches an epoch shared by 2 ranks: 2 steps an epoch, 3 epochs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(dump: Path, *launcher: str) -> list[str]:
    """The command line under torchrun, each rank dumping what it trained into ``dump``."""
    program = ["-m", "helpers.rank_dump", str(dump)]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *program]


def env(helpers) -> dict[str, str]:
    return helpers.subprocess_env(OMP_NUM_THREADS="1")


def check(proc: subprocess.CompletedProcess | subprocess.Popen, stderr: str) -> None:
    assert proc.returncode == 0, stderr[-4000:]


def assert_ranks_agree(out: Path, dump: Path, steps: int = STEPS) -> None:
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [d["step"] for d in ranks] == [steps, steps]
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(tensor, ranks[1]["model"][name]), name
    ids = [d["ids"] for d in ranks]
    assert ids[0] != ids[1]  # different batches on each rank
    assert set(ids[0]) | set(ids[1]) == {f"u{i}" for i in range(12)}
    newest = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert newest["progress"]["step"] == steps and len(newest["ranks"]) == 2
    for name, tensor in newest["model"].items():
        assert torch.equal(tensor, ranks[0]["model"][name]), name


def table(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_processes_train_in_step_and_resume_exactly(tmp_path, helpers, recipe_file, corpus):
    def run(out: Path, dump: Path, *extra: str) -> subprocess.CompletedProcess:
        launcher = torchrun(dump, "--standalone", "--nproc_per_node=2")
        args = [*launcher, *helpers.train_args(recipe_file, corpus, out), *extra]
        proc = subprocess.run(args, env=env(helpers), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        check(proc, proc.stderr)
        return proc

    whole = run(tmp_path / "a", tmp_path / "dump_a")
    assert whole.stdout.count("done after 6 steps") == 1  # rank 0 only
    assert_ranks_agree(tmp_path / "a", tmp_path / "dump_a")
    assert len([r for r in table(tmp_path / "a") if r["train_loss"]]) == STEPS

    stopped = run(tmp_path / "b", tmp_path / "dump_b", "--max-steps", "3")
    assert "stopped at step 3" in stopped.stdout
    run(tmp_path / "b", tmp_path / "dump_b")
    assert_ranks_agree(tmp_path / "b", tmp_path / "dump_b")
    assert table(tmp_path / "b") == table(tmp_path / "a")
    a = torch.load(tmp_path / "dump_a" / "rank1.pt", weights_only=True)
    b = torch.load(tmp_path / "dump_b" / "rank1.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_two_nodes_of_one_process_each(tmp_path, helpers, recipe_file, corpus, tiny_recipe):
    """Also with a teacher (knowledge distillation): every rank runs its own copy outside DDP,
    and the ranks still end with the same weights; and with a held-out set choosing the
    checkpoints: its WER is over both ranks' shares."""
    port, out, dump = free_port(), tmp_path / "run", tmp_path / "dump"
    torch.manual_seed(5)
    teacher = ASR.from_recipe(tiny_recipe(), CharTokenizer("AB ")).save(tmp_path / "teacher.pt")
    kd = ["--teacher", str(teacher), "--kd-weight", "0.5", "--kd-temperature", "2",
          "--valid-heldout", str(corpus), "--set", "train.select_on=heldout"]  # fmt: skip
    procs = []
    for node in (0, 1):
        launcher = torchrun(dump, "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
                            "--master_addr=127.0.0.1", f"--master_port={port}")  # fmt: skip
        args = [*launcher, *helpers.train_args(recipe_file, corpus, out), *kd]
        procs.append(subprocess.Popen(args, env=env(helpers), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True))  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        check(proc, err)
    assert "done after 6 steps" in outputs[0][0] and "done after" not in outputs[1][0]
    assert_ranks_agree(out, dump)
    assert (out / "model.pt").is_file()
    assert all(float(r["kd_loss"]) > 0 for r in table(out) if r["train_loss"])
    valid = [r for r in table(out) if r["wer"]]
    assert valid and all(r["wer_heldout"] == r["wer"] for r in valid)  # the same set twice
    newest = torch.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert newest["valid_heldout"]["utterances"] == 12  # both ranks' shares, gathered
    assert [e["wer"] for e in newest["progress"]["best"]] == pytest.approx(
        [float(next(r["wer_heldout"] for r in valid if int(r["step"]) == e["step"]))
         for e in newest["progress"]["best"]], rel=1e-5)  # fmt: skip
    assert not any(
        "teacher" in name for name in torch.load(dump / "rank1.pt", weights_only=True)["model"]
    )


def test_two_processes_with_feature_distillation(tmp_path, helpers, corpus):
    """Feature distillation under DDP: each rank looks up the teacher's rows of its own batches
    through the forward hook on the wrapped model's layer, the ridge loss enters each rank's
    loss, and the ranks still end with the same weights, so its gradients were averaged too."""
    store = corpus_store(tmp_path / "store", corpus)
    out, dump = tmp_path / "run", tmp_path / "dump"
    overrides = tiny_overrides("transducer", f"train.feature_kd.features={store}",
                               "train.feature_kd.weight=2", "train.feature_kd.layer=1")  # fmt: skip
    args = [*torchrun(dump, "--standalone", "--nproc_per_node=2"), "train",
            str(RECIPES["transducer"]), "--train", str(corpus), "--valid", str(corpus),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.run(args, env=env(helpers), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    check(proc, proc.stderr)
    assert_ranks_agree(out, dump)
    kd = [float(r["kd_loss"]) for r in table(out) if r["train_loss"]]
    assert len(kd) == STEPS and all(0 < v <= 1 for v in kd)
    assert "12 of 12 training utterances have features" in (out / "train.log").read_text()
