"""Manifests: one JSON object per line, ``{"id", "audio", "text", "duration"}``.

``audio`` is a path, relative paths being relative to the manifest's folder (so a data folder
can move as a whole); ``duration`` is in seconds; ``id`` is optional and defaults to the audio
file's name without its extension. Every problem raises ``ManifestError`` (a ``ValueError``)
with one line ``<manifest>:<line>: <problem>``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamba_asr.atomic import atomic_write_text
from mamba_asr.files import read_text

__all__ = ["ManifestError", "Utterance", "read_manifest", "write_manifest"]

REQUIRED_KEYS = ("audio", "text", "duration")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Utterance:
    """One recording and its transcript. ``audio`` is absolute once read from a manifest."""

    id: str
    audio: Path
    text: str
    duration: float  # seconds


def read_manifest(path: str | os.PathLike[str]) -> list[Utterance]:
    """Utterances of a JSONL manifest, in file order; blank lines are skipped.

    Raises ``ManifestError`` naming the file and line for bad JSON, a line that is not an
    object, a missing key, an empty text, a duration that is not a positive number, an id
    seen on an earlier line, or bytes that are not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    folder = path.absolute().parent
    utterances: list[Utterance] = []
    first_line: dict[str, int] = {}
    lines = io.StringIO(read_text(path, ManifestError), newline=None)  # universal newlines
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utt = _parse_line(line, folder, f"{path}:{number}")
        if utt.id in first_line:
            raise ManifestError(
                f"{path}:{number}: id {utt.id!r} already used on line {first_line[utt.id]}"
            )
        first_line[utt.id] = number
        utterances.append(utt)
    return utterances


def write_manifest(path: str | os.PathLike[str], utterances: Iterable[Utterance]) -> Path:
    """Write utterances as JSONL, atomically (a temporary file in the same folder, renamed).

    Audio paths under the manifest's folder are written relative to it, others absolute.
    The folder is created if needed. Returns the manifest's path.
    """
    path = Path(path)
    folder = path.absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(_to_json(utt, folder), ensure_ascii=False) + "\n" for utt in utterances)
    atomic_write_text(path, "".join(lines))
    return path


def _parse_line(line: str, folder: Path, where: str) -> Utterance:
    """One manifest line -> Utterance; ManifestError prefixed with ``where`` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    audio, text = _string(obj, "audio", where), _string(obj, "text", where).strip()
    if not text:
        raise ManifestError(f"{where}: empty text")
    duration = obj["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ManifestError(f"{where}: duration must be a number, got {duration!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise ManifestError(f"{where}: duration must be > 0 seconds, got {duration!r}")
    audio_path = Path(os.path.normpath(folder / audio))  # an absolute path stays as it is
    utt_id = _string(obj, "id", where) if "id" in obj else Path(audio).stem
    return Utterance(id=utt_id, audio=audio_path, text=text, duration=float(duration))


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or (key != "text" and not value):
        raise ManifestError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _to_json(utt: Utterance, folder: Path) -> dict[str, Any]:
    audio = Path(utt.audio).absolute()
    if audio.is_relative_to(folder):
        audio = audio.relative_to(folder)
    return {"id": utt.id, "audio": audio.as_posix(), "text": utt.text, "duration": utt.duration}
