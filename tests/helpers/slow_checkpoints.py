"""``python -m helpers.slow_checkpoints SECONDS ARGS...``: the command line ``mamba-asr ARGS``
with checkpoint saves that sleep SECONDS between writing the temporary file and renaming it, so
that a test can kill training in the middle of a save (tests/train/test_crash.py; tests/ must be
on PYTHONPATH, as ``subprocess_env`` of tests/train/conftest.py puts it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mamba_asr.atomic import atomic_write
from mamba_asr.cli import main
from mamba_asr.train import checkpoints


def slow_atomic_save(seconds: float) -> Callable[[Any, str | os.PathLike[str]], Path]:
    """``atomic_save`` that sleeps ``seconds`` once the temporary file is written."""

    def save(obj: Any, path: str | os.PathLike[str]) -> Path:
        def write(f: BinaryIO) -> None:
            torch.save(obj, f)
            f.flush()
            time.sleep(seconds)  # written, not yet renamed

        return atomic_write(path, write)

    return save


if __name__ == "__main__":
    checkpoints.atomic_save = slow_atomic_save(float(sys.argv[1]))  # what save_checkpoint calls
    sys.exit(main(sys.argv[2:]))
