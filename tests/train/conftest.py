"""Shared pieces of the training tests: a tiny synthetic corpus and a tiny recipe.

The corpus is 12 utterances of tones (440 Hz for "A", 880 Hz for "B", silence for a space)
written as WAV files with a JSONL manifest (tests/helpers/tones.py); the recipe is the tiny CTC
recipe of tests/helpers/recipes.py, a one-layer ConMamba model of width 32 with the alphabet
"AB " (6 ids), so a training step takes a few tens of milliseconds on two CPU cores. Real speech is not needed: these tests check the mechanics.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.recipes import tiny_overrides
from helpers.tones import TEXTS, write_corpus
from mamba_asr.config import RecipeConfig, load_recipe

TESTS = Path(__file__).resolve().parents[1]

# the tiny CTC recipe (tests/helpers/recipes.py): 4 batches an epoch, checkpoints every 2 steps,
# 3 epochs: 12 optimizer steps in all; with dropout, whose random draws a resume must restore
TINY = tiny_overrides("ctc", "model.dropout=0.1")
STEPS = 12


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest of the tiny corpus (used for training and validation alike)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text("model:\n  kind: ctc\n  vocab_size: 6\n")
    return path


@pytest.fixture(scope="session")
def tiny_recipe(recipe_file: Path):
    """``tiny_recipe(*overrides) -> RecipeConfig``: the tiny recipe plus more overrides."""

    def make(*overrides: str) -> RecipeConfig:
        return load_recipe(recipe_file, [*TINY, *overrides])

    return make


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_recipe) -> Path:
    """An uninterrupted run of the tiny recipe (12 steps); returns its folder."""
    from mamba_asr.train import train

    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_recipe(), corpus, corpus, out, device="cpu")
    return out


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mamba_asr", *args]


def train_args(recipe_file: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    """``train`` arguments of the CLI for the tiny recipe."""
    args = ["train", str(recipe_file), "--train", str(corpus), "--valid", str(corpus),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


def helper_command(module: str, *args: str) -> list[str]:
    """``python -m helpers.<module> ARGS``: a program of tests/helpers (``subprocess_env``
    puts tests/ on its path)."""
    return [sys.executable, "-m", f"helpers.{module}", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a training subprocess: same thread count as the tests (so float
    results match an in-process run), no device override, tests/ on the path (for the
    programs of tests/helpers)."""
    env = {k: v for k, v in os.environ.items() if k != "MAMBA_ASR_DEVICE"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    path = [str(TESTS), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return {**env, **extra}


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """This file's helpers and constants (test modules cannot import a conftest by name)."""
    return SimpleNamespace(
        TINY=TINY, STEPS=STEPS, TEXTS=TEXTS, write_corpus=write_corpus, cli_command=cli_command,
        helper_command=helper_command, train_args=train_args, subprocess_env=subprocess_env,
    )  # fmt: skip
