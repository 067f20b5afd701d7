"""Shared test set-up: a fixed thread count and a fresh, fixed seed for every test."""

from __future__ import annotations

import os
import random

import pytest
import torch

THREADS = max(1, min(2, os.cpu_count() or 1))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)


def pytest_report_header(config: pytest.Config) -> str:
    mps = getattr(torch.backends, "mps", None)
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cuda={torch.cuda.is_available()}, mps={bool(mps and mps.is_available())}"
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Random inputs differ between calls inside a test but are the same on every run."""
    random.seed(0)
    torch.manual_seed(0)
