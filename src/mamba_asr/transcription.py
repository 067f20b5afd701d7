"""Transcribing audio files with word and token times, and writing txt, json, srt or vtt.

``transcribe_file(asr, path, options)`` reads a file (any rate, mono or stereo; resampled to
the model's rate) and returns a ``Transcript``: the text, its tokens and its words, each with a
start and end time in seconds.

Times
    CTC models (greedy): a token starts at the first encoder frame of its collapsed run of the
    best path and ends after that run's last frame. Transducer models (greedy): a token starts
    at the encoder frame that emitted it and lasts one frame. One encoder frame is the feature
    hop (10 ms) times the model's subsampling, derived per chunk as round(feature frames /
    encoder frames). Seq2seq models have no alignment, and beam search keeps no frames: their
    tokens and words come with ``start`` and ``end`` set to ``None``.

Words
    Spans of tokens between spaces: the space character of a character tokenizer, or the "▁"
    word-start marker of a SentencePiece piece. A word runs from its first token's start to its
    last token's end.

Streaming
    ``stream_file(asr, path, options, chunk_ms, on_partial)`` decodes a file as it is read, for
    streaming transducer models (causal front end, Mamba encoder): blocks of about ``chunk_ms``
    are decoded, resampled and downmixed one by one (``mamba_asr.audio.read_blocks``), turned
    into the same feature frames as offline (``StreamingFbank``) and fed ``chunk_ms`` at a time
    (rounded down to whole encoder frames) to a ``TransducerStreamer``; ``on_partial(text,
    seconds)`` sees the transcript so far after each chunk. Memory does not grow with the
    length of the audio, save for the tokens of the transcript: no waveform, feature or
    encoder output is kept past its chunk. The whole file is one stream (no 30 s windows), so
    for audio up to 30 s the result equals ``transcribe_file``'s (greedy: token for token).

Long audio
    A model that streams (a causal transducer) decodes the whole file as one stream, read and
    encoded ``CHUNK_SECONDS`` (30 s) at a time (``stream_file``), so nothing is cut at window
    edges and the result equals ``--stream``'s. Other models decode fixed windows of at most
    30 s without overlap, read from the file one window at a time (``read_blocks``); times of
    each window are offset by its start, and a word cut by a window boundary comes out as two
    words. Either way memory stays bounded whatever the length.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from mamba_asr.audio.io import audio_info
from mamba_asr.audio.stream import StreamingFbank, read_blocks
from mamba_asr.decode.search import DecodingOptions, decode_batch
from mamba_asr.decode.streaming import TransducerStreamer
from mamba_asr.decode.transducer import TransducerHypothesis, transducer_greedy
from mamba_asr.models.ctc import CTCModel
from mamba_asr.text.tokenizer import SentencePieceTokenizer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from mamba_asr.asr import ASR

__all__ = [
    "CHUNK_SECONDS",
    "FORMATS",
    "Token",
    "Transcript",
    "Word",
    "cues",
    "format_transcript",
    "stream_chunk_frames",
    "stream_file",
    "streaming_subsampling",
    "transcribe_file",
]

CHUNK_SECONDS = 30.0
STREAM_CHUNK_MS = 320.0
FORMATS = ("txt", "json", "srt", "vtt")
FEATURE_HOP_S = 0.01  # Fbank's 10 ms hop
CUE_WORDS, CUE_SECONDS = 7, 3.5
WORD_START = "\u2581"  # SentencePiece's "▁"

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class Token:
    """One output token: its text (SentencePiece: the piece, "▁" included) and times in
    seconds, ``None`` when the model or search gives no alignment."""

    text: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class Word:
    """A word (tokens between spaces) with times in seconds, or ``None`` without alignment."""

    text: str
    start: float | None
    end: float | None


@dataclass
class Transcript:
    """The result for one file; ``duration`` is the audio's length in seconds."""

    file: str
    text: str
    tokens: list[Token] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0

    @property
    def timed(self) -> bool:
        """Whether tokens and words carry times."""
        return all(w.start is not None for w in self.words)

    def to_json(self) -> str:
        """One JSON line: file, text, tokens and words (each with text, start, end)."""
        data = {
            "file": self.file,
            "text": self.text,
            "tokens": [asdict(t) for t in self.tokens],
            "words": [asdict(w) for w in self.words],
        }
        return json.dumps(data, ensure_ascii=False)


@dataclass(frozen=True)
class _Emitted:
    """A token id with frame span [first, last] in encoder frames (None without alignment)."""

    id: int
    first: int | None
    last: int | None


def transcribe_file(
    asr: ASR,
    path: StrPath,
    options: DecodingOptions | None = None,
    progress: bool = False,
) -> Transcript:
    """The ``Transcript`` of one audio file; see the module docstring for times and chunks.

    ``options``: decoding options (default: greedy, which gives times for CTC and transducer
    models). ``progress``: a tqdm bar over the 30 s windows. Raises ``AudioError`` (one line
    naming the file) for a missing, empty, corrupt or non-audio file or NaN samples.
    """
    options = options or DecodingOptions(strategy="greedy")
    if _streams(asr):
        return _transcribe_as_stream(asr, path, options, progress)
    rate = asr.sample_rate
    step = int(CHUNK_SECONDS * rate)
    bar = None
    if progress:
        from tqdm import tqdm

        info = audio_info(path)
        total = math.ceil(info.duration * rate / step)
        bar = tqdm(total=total, desc=os.fspath(path), unit="chunk", leave=False)
    device = next(asr.parameters()).device
    texts: list[str] = []
    tokens: list[Token] = []
    words: list[Word] = []
    begin = 0
    try:
        for window in _windows(path, rate, step):
            chunk = torch.from_numpy(window).to(device)
            chunk_s = chunk.shape[0] / rate
            text, emitted, frame_s = _decode_chunk(asr, chunk, options)
            offset = begin / rate
            chunk_tokens = [_token(asr, e, frame_s, offset, chunk_s) for e in emitted]
            if text.strip():
                texts.append(text.strip())
            tokens.extend(chunk_tokens)
            words.extend(_words(chunk_tokens, _surfaces(asr, emitted)))
            begin += window.shape[0]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return Transcript(os.fspath(path), " ".join(texts), tokens, words, begin / rate)


def _streams(asr: ASR) -> bool:
    try:
        streaming_subsampling(asr)
    except ValueError:
        return False
    return True


def _transcribe_as_stream(
    asr: ASR, path: StrPath, options: DecodingOptions, progress: bool
) -> Transcript:
    """``stream_file`` in ``CHUNK_SECONDS`` steps, with a tqdm bar over the seconds read."""
    if not progress:
        return stream_file(asr, path, options, chunk_ms=1000 * CHUNK_SECONDS)
    from tqdm import tqdm

    total = audio_info(path).duration
    with tqdm(total=round(total), desc=os.fspath(path), unit="s", leave=False) as bar:

        def advance(_text: str, seconds: float) -> None:
            bar.update(min(round(seconds), round(total)) - bar.n)

        return stream_file(asr, path, options, 1000 * CHUNK_SECONDS, on_partial=advance)


def _windows(path: StrPath, rate: int, step: int) -> Iterator[np.ndarray]:
    """The file at ``rate`` (mono) in consecutive windows of ``step`` samples, the last one
    shorter; read block by block, so only about one window is held at a time."""
    parts: list[np.ndarray] = []
    held = 0
    for block in read_blocks(path, rate, step / rate):
        parts.append(block)
        held += block.shape[0]
        while held >= step:
            joined = np.concatenate(parts)  # (held,)
            yield joined[:step]
            parts, held = [joined[step:]], held - step
    if held:
        yield np.concatenate(parts)


def _decode_chunk(
    asr: ASR, wave: torch.Tensor, options: DecodingOptions
) -> tuple[str, list[_Emitted], float]:
    """Text, emitted tokens and the encoder frame duration (s) of one mono chunk (N,)."""
    lengths = torch.tensor([wave.shape[0]], device=wave.device)
    model = asr.model
    was_training = asr.training
    asr.eval()
    try:
        with torch.no_grad():
            feats, feat_lengths = asr.features(wave[None].float(), lengths)
            n_feats = int(feat_lengths[0])
            if n_feats == 0:  # shorter than one analysis window: nothing to hear
                return "", [], 0.0
            emitted: list[_Emitted]
            if options.strategy == "greedy" and isinstance(model, CTCModel):
                out = model(feats, feat_lengths)  # best path, as ``ctc_greedy`` decodes it
                n_enc = int(out.lengths[0])
                emitted = _ctc_runs(out.log_probs[0, :n_enc].argmax(-1).tolist(), model.blank)
            elif options.strategy == "greedy" and hasattr(model, "joiner"):
                enc = model.encode(feats, feat_lengths)
                hyp = transducer_greedy(model, enc.memory, enc.lengths)[0]
                n_enc = int(enc.lengths[0])
                emitted = [_Emitted(t, f, f) for t, f in zip(hyp.tokens, hyp.frames, strict=True)]
            else:  # seq2seq, or beam search: tokens without frames
                result = decode_batch(model, feats, feat_lengths, options)[0]
                emitted = [_Emitted(t, None, None) for t in result.tokens]
                n_enc = 0
    finally:
        asr.train(was_training)
    ids = [e.id for e in emitted]
    subsampling = max(1, round(n_feats / n_enc)) if n_enc else 0
    return asr.tokenizer.decode(ids), emitted, subsampling * FEATURE_HOP_S


# --- streaming ------------------------------------------------------------------------------------


def streaming_subsampling(asr: ASR) -> int:
    """Feature frames per encoder frame of a model that streams; a one-line ``ValueError`` for
    one that does not (CTC, seq2seq, or a transducer with a non-causal part)."""
    model = asr.model
    kind = asr.config.model.kind
    if not hasattr(model, "joiner") or not hasattr(model, "encode_chunk"):
        raise ValueError(
            f"streaming needs a transducer model, this one is {kind} (transcribe it without "
            "--stream)"
        )
    try:
        model.init_state(1)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return int(model.frontend.subsampling)


def stream_chunk_frames(asr: ASR, chunk_ms: float) -> int:
    """Feature frames per streaming step: ``chunk_ms`` rounded down to whole encoder frames;
    a one-line ``ValueError`` below one encoder frame or for a model that does not stream."""
    subsampling = streaming_subsampling(asr)
    hop_ms = 1000 * asr.fbank.hop_length / asr.sample_rate
    frames = int(chunk_ms / hop_ms + 1e-9) // subsampling * subsampling
    if frames < 1:
        raise ValueError(
            f"chunk_ms must be at least {subsampling * hop_ms:g} (one encoder frame of this "
            f"model), got {chunk_ms:g}"
        )
    return frames


def stream_file(
    asr: ASR,
    path: StrPath,
    options: DecodingOptions | None = None,
    chunk_ms: float = STREAM_CHUNK_MS,
    on_partial: Callable[[str, float], None] | None = None,
) -> Transcript:
    """The ``Transcript`` of one file decoded as a stream; see the module docstring.

    ``chunk_ms``: audio per decoding step, rounded down to whole encoder frames (at least one).
    ``on_partial(text, seconds)``: called after each step with the transcript so far and the
    seconds of audio consumed. Raises ``ValueError`` for a model that does not stream and
    ``AudioError`` for a bad file (possibly after some partial results).
    """
    options = options or DecodingOptions(strategy="greedy")
    subsampling = streaming_subsampling(asr)
    hop_s = asr.fbank.hop_length / asr.sample_rate
    chunk_frames = stream_chunk_frames(asr, chunk_ms)
    device = next(asr.parameters()).device
    was_training = asr.training
    asr.eval()
    try:
        with torch.no_grad():
            hyp, samples = _stream(asr, path, options, chunk_frames, device, on_partial)
    finally:
        asr.train(was_training)
    duration = samples / asr.sample_rate
    frame_s = subsampling * hop_s
    if len(hyp.frames) == len(hyp.tokens):  # greedy: the frame of each token
        emitted = [_Emitted(t, f, f) for t, f in zip(hyp.tokens, hyp.frames, strict=True)]
    else:  # beam search keeps no frames
        emitted = [_Emitted(t, None, None) for t in hyp.tokens]
    tokens = [_token(asr, e, frame_s, 0.0, duration) for e in emitted]
    words = _words(tokens, _surfaces(asr, emitted))
    text = asr.tokenizer.decode(hyp.tokens).strip()
    return Transcript(os.fspath(path), text, tokens, words, duration)


def _stream(
    asr: ASR,
    path: StrPath,
    options: DecodingOptions,
    chunk_frames: int,
    device: torch.device,
    on_partial: Callable[[str, float], None] | None,
) -> tuple[TransducerHypothesis, int]:
    """Feed the file's features ``chunk_frames`` at a time; the final best hypothesis and the
    number of samples read (at the model's rate)."""
    rate = asr.sample_rate
    fbank = StreamingFbank(asr.fbank)
    streamer = TransducerStreamer(asr.model, 1, options, device=device)
    pending = torch.zeros(1, 0, asr.fbank.n_mels, device=device)  # (1, < chunk_frames, M)
    samples = 0
    for block in read_blocks(path, rate, chunk_frames * asr.fbank.hop_length / rate):
        samples += block.shape[0]
        feats = fbank.accept(torch.from_numpy(block).to(device))  # (1, t, M)
        pending = torch.cat([pending, asr.cmvn(feats)], dim=1)
        best = None
        while pending.shape[1] >= chunk_frames:
            best = streamer.feed(pending[:, :chunk_frames])[0]
            pending = pending[:, chunk_frames:]
        if best is not None and on_partial is not None:
            on_partial(asr.tokenizer.decode(best.tokens).strip(), samples / rate)
    if pending.shape[1] > 0:  # the last chunk may hold any number of frames
        streamer.feed(pending)
    return streamer.finalize()[0], samples


def _ctc_runs(best: list[int], blank: int) -> list[_Emitted]:
    """Tokens of a best path (one id per frame) with the first and last frame of each run."""
    out: list[_Emitted] = []
    prev = -1
    for t, label in enumerate(best):
        if label != blank and label == prev and out:
            out[-1] = _Emitted(label, out[-1].first, t)
        elif label != blank:
            out.append(_Emitted(label, t, t))
        prev = label
    return out


def _token(asr: ASR, e: _Emitted, frame_s: float, offset: float, chunk_s: float) -> Token:
    text = _piece(asr, e.id)
    if e.first is None or e.last is None:
        return Token(text, None, None)
    start = offset + min(e.first * frame_s, chunk_s)
    end = offset + min((e.last + 1) * frame_s, chunk_s)
    return Token(text, round(start, 3), round(end, 3))


def _piece(asr: ASR, index: int) -> str:
    tok = asr.tokenizer
    if isinstance(tok, SentencePieceTokenizer):
        return tok.id_to_piece(index)
    return tok.decode([index])


def _surfaces(asr: ASR, emitted: list[_Emitted]) -> list[str]:
    """Each token's text as it reads in the transcript; a word break shows as a space."""
    tok = asr.tokenizer
    if isinstance(tok, SentencePieceTokenizer):
        return [
            (" " if tok.id_to_piece(e.id).startswith(WORD_START) else "") + tok.decode([e.id])
            for e in emitted
        ]
    return [tok.decode([e.id]) for e in emitted]


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


# --- output formats ---------------------------------------------------------------------------


def cues(transcript: Transcript) -> list[tuple[float, float, str]]:
    """Subtitle cues (start, end, text): up to ``CUE_WORDS`` words and ``CUE_SECONDS`` each;
    without word times (seq2seq, beam search) one cue spans the whole file."""
    if not transcript.text:
        return []
    if not transcript.timed or not transcript.words:
        return [(0.0, transcript.duration, transcript.text)]
    out: list[tuple[float, float, str]] = []
    group: list[Word] = []
    for word in transcript.words:
        assert word.start is not None and word.end is not None
        if group and (len(group) >= CUE_WORDS or word.end - group[0].start > CUE_SECONDS):  # type: ignore[operator]
            out.append(_cue(group))
            group = []
        group.append(word)
    if group:
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


def format_transcript(
    transcript: Transcript, fmt: str, several: bool = False, first_cue: int = 1
) -> str:
    """One file's output in ``fmt`` (txt, json, srt, vtt), without a trailing newline.

    txt: the text (``several``: prefixed "FILE: "); json: one line; srt: numbered cues from
    ``first_cue``; vtt: cues only (the caller writes the "WEBVTT" header once; ``several`` adds
    a NOTE naming the file). May be empty (srt/vtt of a silent file).
    """
    if fmt == "txt":
        return f"{transcript.file}: {transcript.text}" if several else transcript.text
    if fmt == "json":
        return transcript.to_json()
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    sep = "," if fmt == "srt" else "."
    blocks: list[str] = []
    if fmt == "vtt" and several:
        blocks.append(f"NOTE {transcript.file}")
    for i, (start, end, text) in enumerate(cues(transcript), start=first_cue):
        timing = f"{_timestamp(start, sep)} --> {_timestamp(end, sep)}"
        blocks.append(f"{i}\n{timing}\n{text}" if fmt == "srt" else f"{timing}\n{text}")
    return "\n\n".join(blocks)
