"""The WebSocket protocol of ``/v1/stream``: what a client may send, what the server answers.

Client to server:

- optionally first, a text message ``{"type": "config", "sample_rate": 16000, "format":
  "pcm16"}`` (``format``: ``pcm16``, little-endian 16-bit integers, or ``float32``,
  little-endian floats in [-1, 1]; default 16000 Hz ``pcm16``; other rates are resampled);
- binary messages of audio, mono, in that format, of any length;
- the text message ``{"type": "end"}`` when the audio is over.

Server to client, text messages of JSON, each with a ``type``:

- ``ready``: the stream is open (``sample_rate`` and ``format`` it expects);
- ``partial``: after each decoded chunk, the current segment so far;
- ``final``: a segment that ended (the endpoint rules: ``mamba_asr.decode.endpoint``);
- ``done``: after ``end``, the whole transcript; then the server closes with 1000;
- ``error``: the reason (also the close reason) before the server closes with an error code.

``partial``, ``final`` and ``done`` carry the object of ``mamba-asr transcribe --format json``
(``text``, ``duration``, ``segments``, ``tokens``, ``words`` with start and end seconds)
of that segment (partial, final) or of the whole stream (done), and ``segment``: the index of
the segment (from 0), and ``decoded``: the seconds of audio decoded so far.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mamba_asr.transcript import Segment, Transcript

__all__ = [
    "CLOSE_BAD_DATA",
    "CLOSE_BUSY",
    "CLOSE_POLICY",
    "CLOSE_SHUTDOWN",
    "FORMATS",
    "AudioFormat",
    "ProtocolError",
    "message",
    "parse_text",
    "samples_of",
]

FORMATS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
CLOSE_NORMAL, CLOSE_SHUTDOWN = 1000, 1001
CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_TOO_BIG = 1007, 1008, 1009
CLOSE_BUSY = 1013  # try again later


class ProtocolError(ValueError):
    """A client's mistake: ``code`` is the WebSocket close code, the text the close reason."""

    def __init__(self, reason: str, code: int = CLOSE_BAD_DATA) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class AudioFormat:
    """What a stream's binary messages hold: ``sample_rate`` Hz mono samples of ``format``."""

    sample_rate: int = 16000
    format: str = "pcm16"


def parse_text(text: str) -> dict[str, Any]:
    """A client's text message as a dict with a known ``type`` (``config`` or ``end``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"a text message must be JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ProtocolError("a text message must be a JSON object")
    kind = data.get("type", "config" if "sample_rate" in data or "format" in data else None)
    if kind not in ("config", "end"):
        raise ProtocolError(
            f'unknown message type {kind!r}: send {{"type": "config", ...}} or {{"type": "end"}}',
            CLOSE_POLICY,
        )
    return {**data, "type": kind}


def audio_format(data: dict[str, Any], max_rate: int = 192000) -> AudioFormat:
    """The ``AudioFormat`` of a config message; a ``ProtocolError`` naming a bad field."""
    unknown = sorted(set(data) - {"type", "sample_rate", "format"})
    if unknown:
        raise ProtocolError(f"config: unknown field {unknown[0]!r} (sample_rate, format)")
    rate = data.get("sample_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1000 <= rate <= max_rate:
        raise ProtocolError(
            f"config: sample_rate must be a whole number of Hz in 1000..{max_rate}, got {rate!r}"
        )
    fmt = data.get("format", "pcm16")
    if fmt not in FORMATS:
        raise ProtocolError(f"config: format must be pcm16 or float32, got {fmt!r}")
    return AudioFormat(rate, fmt)


def samples_of(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """A binary message as float32 samples (n,); a ``ProtocolError`` for a byte count that is
    not whole samples or for float samples that are not finite or far out of [-1, 1]."""
    dtype = FORMATS[fmt.format]
    if len(data) % dtype.itemsize:
        raise ProtocolError(
            f"a binary message of {len(data)} bytes is not whole {fmt.format} samples "
            f"({dtype.itemsize} bytes each)"
        )
    raw = np.frombuffer(data, dtype=dtype)
    if fmt.format == "pcm16":
        return raw.astype(np.float32) / 32768.0
    wave = raw.astype(np.float32)
    if wave.size and not (np.isfinite(wave).all() and float(np.abs(wave).max()) <= 64.0):
        raise ProtocolError(
            "float32 samples must be finite and in [-1, 1] (is the audio pcm16? say so in the "
            'config message: {"format": "pcm16"})'
        )
    return wave


def message(kind: str, segment: int, decoded: float, part: Transcript | Segment | None) -> str:
    """A ``partial``, ``final`` or ``done`` message (see the module docstring); ``part``
    ``None``: a segment without text yet."""
    decoded = round(decoded, 3) if math.isfinite(decoded) else 0.0
    if not isinstance(part, Transcript):
        part = Transcript.from_segments(None, [] if part is None else [part], decoded)
    body = part.to_dict()
    body.pop("file", None)
    return json.dumps({"type": kind, "segment": segment, "decoded": decoded, **body},
                      ensure_ascii=False)  # fmt: skip


def control(kind: str, **fields: Any) -> str:
    """A ``ready`` or ``error`` message."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame's reason may hold."""
    data = " ".join(text.split()).encode()
    return data[:123].decode(errors="ignore")
