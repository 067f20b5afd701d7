"""Safe file handling beside ``mamba_asr.atomic``: text reads that name the file.

``read_text(path)`` reads UTF-8 text; bytes that are not UTF-8 raise ``ValueError`` naming the
file, the line and the byte (Python's own error names neither file nor line).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_text"]

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
