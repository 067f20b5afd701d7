"""Safe file handling beside ``mamba_asr.atomic``: text reads that name the file, outputs
checked before the work.

``read_text(path)`` reads UTF-8 text; bytes that are not UTF-8 raise ``ValueError`` naming the
file, the line and the byte (Python's own error names neither file nor line).
``check_output(path, what, inputs, overwrite)`` refuses, before any long work, an output that
would replace an input or an earlier result (unless told to overwrite) or cannot be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output", "read_text"]

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
