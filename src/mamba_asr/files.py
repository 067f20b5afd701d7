"""Safe file handling beside ``mamba_asr.atomic``: text reads that name the file, outputs
checked before the work.

``read_text(path)`` reads UTF-8 text; bytes that are not UTF-8 raise ``ValueError`` naming the
file, the line and the byte (Python's own error names neither file nor line).
``check_output(path, what, inputs, overwrite)`` refuses, before any long work, an output that
would replace an input or an earlier result (unless told to overwrite) or cannot be written.
``lock_folder(folder, name)`` gives one process a folder: the lock file holds its pid and host;
others are refused, naming them, and a lock whose process died on this host is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FolderInUseError", "FolderLock", "check_output", "lock_folder", "read_text"]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def read_text(path: StrPath, error: type[ValueError] = ValueError) -> str:
    """The UTF-8 text of ``path``; ``error`` ``<path>:<line>: not UTF-8 text (...)`` if not."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def check_output(
    path: StrPath,
    what: str,
    inputs: Iterable[StrPath | None] = (),
    overwrite: bool = False,
    folder: bool = False,
) -> Path:
    """Refuse an output path before the work that makes it; creates nothing, returns ``path``.

    ``what`` names the output in the messages (an option, e.g. ``--hyps``). Raises one line
    ``<what> <path>: <problem>`` when ``path`` is one of ``inputs`` (even with ``overwrite``);
    already exists, unless ``overwrite`` (an empty folder, when ``folder``, does not count);
    is a folder where a file is wanted or the reverse; or cannot be created: its nearest
    existing parent is not a folder, or a file cannot be made there.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise ValueError(f"{what} {path}: is an input of this command; choose another path")
    if path.exists():
        _check_existing(path, what, overwrite, folder)
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {path}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PermissionError(f"{what} {path}: cannot write in {parent} ({reason})") from None
    return path


def _check_existing(path: Path, what: str, overwrite: bool, folder: bool) -> None:
    if path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "not a folder"
        raise ValueError(f"{what} {path}: is {kind}; give a {'folder' if folder else 'file'}")
    if overwrite or (folder and not any(path.iterdir())):
        return
    raise FileExistsError(f"{what} {path}: already exists; --overwrite replaces it")


def _same_file(a: Path, b: Path) -> bool:
    """The same file, through links and relative paths too."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


class FolderInUseError(OSError):
    """Another live process holds the folder's lock; the message names its pid and host."""


@dataclass
class FolderLock:
    """A held lock: ``path`` holds this process's pid and host. ``release`` removes it, and
    the folder too when ``lock_folder`` created it and it is still empty."""

    path: Path
    created_folder: bool

    def release(self) -> None:
        if _read_holder(self.path) == _me():  # not a lock someone took over since
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty


def lock_folder(folder: StrPath, name: str) -> FolderLock:
    """Take ``<folder>/<name>`` (the folder is created if needed) for this process.

    Raises ``FolderInUseError`` when the lock is held by a live process, or by a process on
    another host (whose liveness cannot be checked from here). A lock left by a process that
    no longer runs on this host (killed) is taken over, with a WARNING naming it.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    for _ in range(3):  # a takeover races with other starters at most a few times
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _take_over_stale(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_me(), f)
        return FolderLock(path, created)
    raise FolderInUseError(f"{path}: could not take the lock; try again")


def _take_over_stale(path: Path) -> None:
    """Remove ``path`` if its holder is gone; FolderInUseError if it may still run."""
    holder = _read_holder(path)
    if holder is None:  # being written this instant, or left empty by a crash
        time.sleep(0.2)
        holder = _read_holder(path)
    if holder is not None and _running(holder):
        raise FolderInUseError(
            f"{path.parent} is in use by process {holder['pid']} on {holder['host']} (lock "
            f"{path}); if no such process runs any more, delete the lock file"
        )
    who = "an unreadable lock" if holder is None else f"process {holder['pid']} on this host"
    log.warning("%s: taking over the lock of %s, which no longer runs", path, who)
    stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):  # another starter may have moved it
        os.replace(path, stale)
        stale.unlink()


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and "host" in holder
    return holder if ok else None


def _running(holder: dict[str, Any]) -> bool:
    """True unless the holder is on this host and its pid is gone (or a zombie)."""
    if holder["host"] != socket.gethostname():
        return True
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # Linux: a killed child its parent has not waited for yet still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
