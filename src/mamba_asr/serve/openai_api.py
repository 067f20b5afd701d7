"""``POST /v1/audio/transcriptions`` in the shape of OpenAI's audio API.

Form fields: ``file`` (an audio file that soundfile reads: wav, flac, ogg, mp3, ...),
``model`` (accepted; the server has one model), ``response_format`` (``json``, ``text``,
``srt``, ``vtt``, ``verbose_json``), ``timestamp_granularities[]`` (``segment``, ``word``;
with ``verbose_json``), ``stream`` (``true``: server-sent events, ``transcript.text.delta``
per segment as it is decoded, then ``transcript.text.done``), ``language`` (``en`` or
empty: the model is English), ``prompt`` and ``temperature`` (accepted, unused). Errors come as
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from mamba_asr.audio.io import soundfile_reason
from mamba_asr.transcript import Segment, Transcript
from mamba_asr.writers import format_transcript

__all__ = [
    "RESPONSE_FORMATS",
    "ApiError",
    "error_body",
    "read_upload",
    "render",
    "sse_events",
]

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
LANGUAGES = ("", "en", "english")


class ApiError(Exception):
    """An error answered in OpenAI's shape with HTTP ``status``."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def read_upload(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """An uploaded file's samples (n,) float32, mono, and its rate; ``ApiError`` if unreadable."""
    if not data:
        raise ApiError(f"file {name!r} is empty", param="file")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        problem = soundfile_reason(exc)
        raise ApiError(f"file {name!r} is not audio that can be read ({problem})",
                       param="file") from None  # fmt: skip
    if wave.shape[0] == 0:
        raise ApiError(f"file {name!r} holds no samples", param="file")
    if not np.isfinite(wave).all():
        raise ApiError(f"file {name!r} has NaN or infinite samples", param="file")
    return wave.mean(axis=1), int(rate)


def check_fields(form: dict[str, Any]) -> tuple[str, list[str], bool]:
    """response_format, granularities and stream of the form; ``ApiError`` naming a bad one."""
    fmt = form.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                       param="response_format")  # fmt: skip
    grains = form.get("timestamp_granularities[]") or form.get("timestamp_granularities") or []
    grains = [grains] if isinstance(grains, str) else list(grains)
    bad = [g for g in grains if g not in GRANULARITIES]
    if bad:
        raise ApiError(f"timestamp_granularities must be segment or word, got {bad[0]!r}",
                       param="timestamp_granularities")  # fmt: skip
    if grains and fmt != "verbose_json":
        raise ApiError("timestamp_granularities needs response_format verbose_json",
                       param="timestamp_granularities")  # fmt: skip
    stream = str(form.get("stream") or "false").lower()
    if stream not in ("true", "false"):
        raise ApiError(f"stream must be true or false, got {stream!r}", param="stream")
    if stream == "true" and fmt not in ("json", "text"):
        raise ApiError("stream=true goes with response_format json or text", param="stream")
    language = str(form.get("language") or "").lower()
    if language not in LANGUAGES:
        raise ApiError(f"this model transcribes English (language en), got {language!r}",
                       param="language")  # fmt: skip
    return fmt, grains or ["segment"], stream == "true"


def render(transcript: Transcript, fmt: str, grains: list[str]) -> tuple[str, str]:
    """The body and media type of a transcript in ``fmt``."""
    if fmt == "json":
        return json.dumps({"text": transcript.text}, ensure_ascii=False), "application/json"
    if fmt == "text":
        return transcript.text + "\n", "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        return format_transcript(transcript, fmt), "text/plain; charset=utf-8"
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "english",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if "segment" in grains:
        body["segments"] = [_segment(i, s) for i, s in enumerate(transcript.segments)]
    if "word" in grains:
        body["words"] = [
            {"word": w.text, "start": w.start or 0.0, "end": w.end or 0.0} for w in transcript.words
        ]
    return json.dumps(body, ensure_ascii=False), "application/json"


def _segment(index: int, segment: Segment) -> dict[str, Any]:
    return {
        "id": index, "seek": 0, "start": segment.start, "end": segment.end,
        "text": segment.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
        "compression_ratio": 0.0, "no_speech_prob": 0.0,
    }  # fmt: skip


def sse_events(parts: Iterator[Segment | Transcript]) -> Iterator[str]:
    """Server-sent events: a ``transcript.text.delta`` per segment as ``parts`` yields it,
    then ``transcript.text.done`` with the whole text (``parts`` ends with the Transcript)."""
    first = True
    for part in parts:
        if isinstance(part, Transcript):
            done = {"type": "transcript.text.done", "text": part.text}
            yield f"data: {json.dumps(done, ensure_ascii=False)}\n\n"
            return
        delta = part.text if first else " " + part.text
        first = False
        event = {"type": "transcript.text.delta", "delta": delta}
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
