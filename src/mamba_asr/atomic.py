"""Atomic file writes: a crash mid-write leaves the old file or the new one, never half of one.

``atomic_write(path, write)`` calls ``write(file)`` on ``<path>.tmp-<pid>`` in the same folder,
flushes and fsyncs it, renames it over ``path`` with ``os.replace`` (atomic on POSIX
and Windows) and fsyncs the folder, so the rename survives a power cut. ``temp_name`` gives the
temporary name, so callers can recognise and clean leftovers of interrupted writes.
``atomic_save(obj, path)`` (``torch.save``) and ``atomic_write_text(path, text)`` are built on it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "TEMP_SUFFIX",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "fsync_dir",
    "temp_name",
]

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


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into ``path`` through a fsynced temporary file; returns ``path``.

    The folder is created if needed. On any error the temporary file is removed and the
    previous ``path`` (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (``atomic_write``); returns ``path``."""
    import torch  # here, so that the text writes load without torch (the manifest writer)

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 ``text`` to ``path`` atomically (``atomic_write``); returns ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
