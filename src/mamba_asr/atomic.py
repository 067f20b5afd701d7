"""Atomic file writes: a crash mid-write leaves the old file or the new one, never half of one.

``atomic_save(obj, path)`` writes ``torch.save(obj)`` to ``<path>.tmp-<pid>`` in the same
folder, flushes and fsyncs it, renames it over ``path`` with ``os.replace`` (atomic on POSIX
and Windows) and fsyncs the folder, so the rename survives a power cut. ``temp_name`` gives the
temporary name, so callers can recognise and clean leftovers of interrupted writes.

Test hook: when ``MAMBA_ASR_TEST_SLOW_CHECKPOINT`` holds a number of seconds, ``atomic_save``
sleeps that long between writing the temporary file and renaming it, so a test can kill the
process in the middle of a save. Unset (the normal case) it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["SLOW_SAVE_ENV", "TEMP_SUFFIX", "atomic_save", "fsync_dir", "temp_name"]

SLOW_SAVE_ENV = "MAMBA_ASR_TEST_SLOW_CHECKPOINT"
TEMP_SUFFIX = re.compile(r"\.tmp-\d+$")


def temp_name(path: Path) -> Path:
    """``<path>.tmp-<pid>``: where ``atomic_save`` writes before renaming."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _test_delay() -> None:
    raw = os.environ.get(SLOW_SAVE_ENV, "").strip()
    if raw:
        time.sleep(float(raw))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` through a fsynced temporary file; returns ``path``.

    The folder is created if needed. On any error the temporary file is removed and the
    previous ``path`` (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _test_delay()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path
