"""What recognition returns: a ``Transcript`` of segments, words and tokens with times.

Times are seconds from the start of the audio. A token is what the model emits (SentencePiece:
the piece, "▁" included); a word is the span of tokens between spaces; a segment is a stretch
of speech between endpoints (``mamba_asr.decode.endpoint``) or, for a model that does not
stream, one decoding window. Without an alignment (seq2seq models, CTC beam search) ``start``
and ``end`` are ``None``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Segment", "SegmentedResults", "Token", "Transcript", "Word", "make_segment"]


@dataclass(frozen=True)
class Token:
    """One output token: its text and times in seconds (``None`` without alignment)."""

    text: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class Word:
    """A word (tokens between spaces) with times in seconds (``None`` without alignment)."""

    text: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: its text, its first and last second, its tokens and words."""

    text: str
    start: float
    end: float
    tokens: list[Token] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    """The result for one audio: ``file`` (``None`` for a waveform), the text (its segments'
    texts joined by spaces), ``segments``, and all their tokens and words; ``duration``: the
    audio's length in seconds. ``str(transcript)`` is the text."""

    file: str | None
    text: str
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0

    @property
    def tokens(self) -> list[Token]:
        return [t for s in self.segments for t in s.tokens]

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]

    @property
    def timed(self) -> bool:
        """Whether tokens and words carry times."""
        return all(w.start is not None for w in self.words)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        """file, text, duration, segments (start, end, text), tokens and words (text, start,
        end): the JSON object of ``to_json``."""
        return {
            "file": self.file,
            "text": self.text,
            "duration": round(self.duration, 3),
            "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in self.segments],
            # not dataclasses.asdict: it deep-copies each field, and a server builds one of
            # these for every partial result
            "tokens": [{"text": t.text, "start": t.start, "end": t.end} for t in self.tokens],
            "words": [{"text": w.text, "start": w.start, "end": w.end} for w in self.words],
        }

    def to_json(self) -> str:
        """One JSON line (``mamba-asr transcribe --format json`` prints exactly this)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_segments(
        cls, file: str | None, segments: list[Segment], duration: float
    ) -> Transcript:
        """The transcript of ``segments`` (empty ones dropped)."""
        kept = [s for s in segments if s.text]
        return cls(file, " ".join(s.text for s in kept), kept, duration)


WORD_START = "\u2581"  # SentencePiece's "▁"


def make_segment(
    tokenizer: object,
    ids: list[int],
    spans: list[tuple[int, int]] | None,
    frame_seconds: float,
    start: float,
    end: float,
) -> Segment:
    """The segment of token ``ids`` decoded from audio [start, end] s: spans (first and last
    encoder frame of each token, counted from ``start``; ``None``: no times) become times,
    clipped to the segment."""
    tokens = []
    for i, index in enumerate(ids):
        text = _piece(tokenizer, index)
        if spans is None:
            tokens.append(Token(text, None, None))
            continue
        first, last = spans[i]
        t0 = min(start + first * frame_seconds, end)
        t1 = min(start + (last + 1) * frame_seconds, end)
        tokens.append(Token(text, round(t0, 3), round(t1, 3)))
    text = tokenizer.decode(ids).strip()  # type: ignore[attr-defined]
    words = _words(tokens, _surfaces(tokenizer, ids))
    return Segment(text, round(start, 3), round(end, 3), tokens, words)


def _piece(tokenizer: object, index: int) -> str:
    piece = getattr(tokenizer, "id_to_piece", None)
    return piece(index) if piece is not None else tokenizer.decode([index])  # type: ignore[attr-defined]


def _surfaces(tokenizer: object, ids: list[int]) -> list[str]:
    """Each token's text as it reads in the transcript; a word break shows as a space."""
    decode = tokenizer.decode  # type: ignore[attr-defined]
    piece = getattr(tokenizer, "id_to_piece", None)
    if piece is None:
        return [decode([i]) for i in ids]
    return [(" " if piece(i).startswith(WORD_START) else "") + decode([i]) for i in ids]


def _words(tokens: list[Token], surfaces: list[str]) -> list[Word]:
    """Words from tokens: a space in a token's surface text ends the current word."""
    words: list[Word] = []
    chars: list[str] = []
    start: float | None = None
    end: float | None = None
    for token, surface in zip(tokens, surfaces, strict=True):
        for ch in surface:
            if ch.isspace():
                if chars:
                    words.append(Word("".join(chars), start, end))
                chars = []
                continue
            if not chars:
                start = token.start
            chars.append(ch)
            end = token.end
    if chars:
        words.append(Word("".join(chars), start, end))
    return words


class SegmentedResults:
    """The results of a stream decoded segment by segment, shared by ``mamba_asr.Stream``
    (PyTorch) and ``mamba_asr.runtime.onnx.OnnxStream`` (onnxruntime, no torch).

    The stream provides: ``asr`` (``tokenizer``, ``sample_rate``), ``search`` (``frame``: the
    segment's encoder frames so far; ``nbest()``: best-first hypotheses with ``tokens`` and
    ``frames``), ``segment_start`` (the segment's first encoder frame in the stream),
    ``frame_seconds``, ``samples`` (accepted, at the model's rate), ``segments`` (the ended
    ones), ``finished`` and ``name``.
    """

    asr: Any
    search: Any
    segment_start: int
    frame_seconds: float
    samples: int
    segments: list[Segment]
    finished: bool
    name: str | None

    def _segment(self) -> Segment:
        """The current segment's best hypothesis so far."""
        hyp = self.search.nbest()[0][0]
        start = self.segment_start * self.frame_seconds
        end = min((self.segment_start + self.search.frame) * self.frame_seconds, self.duration)
        spans = [(f, f) for f in hyp.frames]
        return make_segment(self.asr.tokenizer, hyp.tokens, spans, self.frame_seconds, start, end)

    def _close_segment(self) -> None:
        segment = self._segment()
        if segment.text:
            self.segments.append(segment)

    @property
    def current(self) -> Segment | None:
        """The segment being decoded (its text so far), ``None`` after ``finish``."""
        return None if self.finished else self._segment()

    @property
    def decoded(self) -> float:
        """Seconds of audio decoded so far (whole encoder frames)."""
        return (self.segment_start + self.search.frame) * self.frame_seconds

    @property
    def duration(self) -> float:
        """Seconds of audio accepted so far."""
        return self.samples / self.asr.sample_rate

    @property
    def result(self) -> Transcript:
        """The transcript so far: the ended segments and, before ``finish``, the current one."""
        segments = list(self.segments)
        if not self.finished:
            segments.append(self._segment())
        return Transcript.from_segments(self.name, segments, self.duration)
