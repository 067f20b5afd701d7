"""Writing transcripts: one complete document per audio file in txt, json, srt or vtt.

Each writer turns one ``Transcript`` into the whole text of its file (as whisper's writers
do): ``txt``, one line per segment; ``json``, one line (``Transcript.to_json``); ``srt`` and
``vtt``, subtitle cues numbered from 1 (srt) or under a ``WEBVTT`` header (vtt). A cue is a
segment, cut into pieces of at most ``CUE_WORDS`` words and ``CUE_SECONDS`` seconds where
words have times; a segment without times is one cue. ``write_transcript`` writes the file
atomically and never over an existing one unless told to.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mamba_asr.atomic import atomic_write_text
from mamba_asr.transcript import Segment, Transcript, Word

__all__ = [
    "CUE_SECONDS",
    "CUE_WORDS",
    "FORMATS",
    "cues",
    "format_transcript",
    "output_path",
    "write_transcript",
]

FORMATS = ("txt", "json", "srt", "vtt")
CUE_WORDS, CUE_SECONDS = 7, 3.5


def cues(transcript: Transcript) -> list[tuple[float, float, str]]:
    """Subtitle cues (start, end, text) of every segment, in order."""
    return [cue for segment in transcript.segments for cue in _segment_cues(segment)]


def _segment_cues(segment: Segment) -> list[tuple[float, float, str]]:
    words = segment.words
    if not words or any(w.start is None or w.end is None for w in words):
        return [(segment.start, max(segment.end, segment.start + 0.001), segment.text)]
    out: list[tuple[float, float, str]] = []
    group: list[Word] = []
    for word in words:
        start = group[0].start if group else None
        if group and (len(group) >= CUE_WORDS or word.end - start > CUE_SECONDS):  # type: ignore[operator]
            out.append(_cue(group))
            group = []
        group.append(word)
    out.append(_cue(group))
    return out


def _cue(words: list[Word]) -> tuple[float, float, str]:
    start, end = float(words[0].start or 0.0), float(words[-1].end or 0.0)
    return start, max(end, start + 0.001), " ".join(w.text for w in words)


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, int(math.floor(seconds * 1000 + 0.5)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def format_transcript(transcript: Transcript, fmt: str) -> str:
    """The whole document of ``transcript`` in ``fmt``, ending with a newline (txt of silence:
    the empty string; srt of silence: the empty string; vtt: at least the header)."""
    if fmt == "txt":
        return "".join(f"{s.text}\n" for s in transcript.segments)
    if fmt == "json":
        return transcript.to_json() + "\n"
    if fmt == "srt":
        return "".join(
            f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n\n"
            for i, (a, b, text) in enumerate(cues(transcript), start=1)
        )
    if fmt == "vtt":
        body = "".join(
            f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n"
            for a, b, text in cues(transcript)
        )
        return "WEBVTT\n\n" + body
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def output_path(audio: str | os.PathLike[str], fmt: str, folder: str | os.PathLike[str]) -> Path:
    """Where ``write_transcript`` puts the transcript of ``audio``: ``folder/<stem>.<fmt>``."""
    return Path(folder) / f"{Path(audio).stem}.{fmt}"


def write_transcript(
    transcript: Transcript, fmt: str, path: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write ``format_transcript(transcript, fmt)`` to ``path`` atomically; a one-line
    ``FileExistsError`` if the file exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (--overwrite to replace it)")
    atomic_write_text(path, format_transcript(transcript, fmt))
    return path
