"""Transcribing audio: files or waveforms to ``Transcript``s, read and decoded piece by piece.

``transcribe_file(asr, path, options)`` and ``transcribe_waveform(asr, samples, sample_rate,
options)`` are the one path behind ``mamba_asr.transcribe`` and ``mamba-asr transcribe``:

- a model that streams (a causal transducer) decodes the audio as one ``Stream``
  (``mamba_asr.streaming``), read ``CHUNK_SECONDS`` (30 s) at a time and decoded
  ``OFFLINE_CHUNK_MS`` at a time, or read and decoded ``chunk_ms`` at a time with
  ``on_partial(text, seconds)`` seeing the transcript so far after each piece (``--stream``).
  Segments end at silence (``mamba_asr.decode.endpoint``), each decoded from a fresh state; the
  chunk size changes nothing in the result.
- other models (CTC, seq2seq) decode windows of at most 30 s without overlap, one window at a
  time; each window is a segment, its times offset by its start (a word cut by a window
  boundary comes out as two words).

Either way memory stays bounded whatever the length of the audio. Times: a CTC token (greedy
search) spans its collapsed run of the best path; a transducer token is the frame that emitted
it (greedy and beam search); seq2seq models and CTC beam search give no times (``None``). One
encoder frame is the feature hop (10 ms) times the model's subsampling.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from mamba_asr.asr import ASR, eval_mode
from mamba_asr.audio.io import as_waveform, audio_info, resample
from mamba_asr.audio.stream import read_blocks
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.decode.search import decode_batch
from mamba_asr.streaming import Stream, check_streams, decode_streams
from mamba_asr.transcript import Segment, Transcript, make_segment

__all__ = ["CHUNK_SECONDS", "streams", "transcribe_file", "transcribe_waveform"]

CHUNK_SECONDS = 30.0
# Offline, a stream decodes 2.56 s at a time (32 frames of the bundled model): long enough that
# the model runs on long stretches, short enough that what an endpoint makes it encode anew
# (the rest of the chunk, from a fresh state) stays small. The result does not depend on it.
OFFLINE_CHUNK_MS = 2560.0
LOW_RATE = 8000  # Hz: below this a file gets a warning (telephone speech is 8 kHz)
logger = logging.getLogger(__name__)
Partial = Callable[[str, float], None]


def streams(asr: ASR) -> bool:
    """Whether ``asr``'s model streams (and so may be decoded with ``chunk_ms``)."""
    try:
        check_streams(asr)
    except ValueError:
        return False
    return True


def transcribe_file(
    asr: ASR,
    path: str | os.PathLike[str],
    options: DecodingOptions | None = None,
    *,
    chunk_ms: float | None = None,
    on_partial: Partial | None = None,
    endpoint: EndpointConfig | None = None,
    progress: bool = False,
) -> Transcript:
    """The ``Transcript`` of one audio file (any rate, mono or stereo); see the module docstring.

    options: decoding options (default ``DecodingOptions()``, resolved for the model);
    chunk_ms: decode in steps of this much audio (streaming models only; default 30 s);
    progress: a tqdm bar over the seconds read. Raises ``AudioError`` (one line naming the
    file) for a missing, empty, corrupt or non-audio file or NaN samples (possibly after
    partial results) and ``ValueError`` for options that do not suit the model.
    """
    step = (CHUNK_SECONDS if chunk_ms is None else chunk_ms / 1000) if streams(asr) else None
    info = audio_info(path)
    if info.sample_rate < LOW_RATE:
        logger.warning(
            "%s: recorded at %d Hz, below %d Hz: most of what the model listens to (up to "
            "%d Hz) is missing; expect a poor transcript",
            os.fspath(path), info.sample_rate, LOW_RATE, asr.sample_rate // 2,
        )  # fmt: skip
    blocks = read_blocks(path, asr.sample_rate, step or CHUNK_SECONDS)
    total = info.duration if progress else None
    return _transcribe(asr, blocks, os.fspath(path), options, chunk_ms, on_partial, endpoint, total)


def transcribe_waveform(
    asr: ASR,
    samples: object,
    sample_rate: int | None = None,
    options: DecodingOptions | None = None,
    *,
    chunk_ms: float | None = None,
    on_partial: Partial | None = None,
    endpoint: EndpointConfig | None = None,
) -> Transcript:
    """The ``Transcript`` of mono ``samples`` (float in [-1, 1] or integer PCM, NumPy or torch)
    at ``sample_rate`` (default: the model's), decoded exactly as a file is."""
    rate = asr.sample_rate if sample_rate is None else sample_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample_rate must be a whole number of Hz > 0, got {sample_rate!r}")
    wave = resample(as_waveform(samples), int(rate), asr.sample_rate)
    step = round(asr.sample_rate * (CHUNK_SECONDS if chunk_ms is None else chunk_ms / 1000))
    blocks = (wave[i : i + max(1, step)] for i in range(0, wave.shape[0], max(1, step)))
    return _transcribe(asr, blocks, None, options, chunk_ms, on_partial, endpoint, None)


def _transcribe(
    asr: ASR,
    blocks: Iterable[np.ndarray],
    name: str | None,
    options: DecodingOptions | None,
    chunk_ms: float | None,
    on_partial: Partial | None,
    endpoint: EndpointConfig | None,
    total: float | None,
) -> Transcript:
    """Blocks (mono, at the model's rate) -> transcript, with a progress bar over ``total``
    seconds when given."""
    options = asr.resolve_options(options)
    if chunk_ms is not None:
        check_streams(asr)  # one line for a model that does not stream
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(asr))
        stack.enter_context(torch.no_grad())
        bar = None
        if total is not None:
            from tqdm import tqdm

            bar = stack.enter_context(tqdm(total=round(total), desc=name, unit="s", leave=False))
        if streams(asr):
            return _stream(asr, blocks, name, options, chunk_ms, on_partial, endpoint, bar)
        return _windows(asr, blocks, name, options, bar)


def _stream(
    asr: ASR,
    blocks: Iterable[np.ndarray],
    name: str | None,
    options: DecodingOptions,
    chunk_ms: float | None,
    on_partial: Partial | None,
    endpoint: EndpointConfig | None,
    bar: object,
) -> Transcript:
    chunk = OFFLINE_CHUNK_MS if chunk_ms is None else chunk_ms
    stream = Stream(asr, options, chunk, endpoint, name)
    for block in blocks:
        stream.accept_waveform(asr.sample_rate, block)
        decode_streams([stream])
        if on_partial is not None:
            on_partial(stream.result.text, stream.duration)
        _advance(bar, stream.duration)
    return stream.finish()


def _windows(
    asr: ASR, blocks: Iterable[np.ndarray], name: str | None, options: DecodingOptions, bar: object
) -> Transcript:
    """Windows of at most ``CHUNK_SECONDS``, each decoded alone and made a segment."""
    rate = asr.sample_rate
    device = next(asr.parameters()).device
    segments: list[Segment] = []
    begin = 0
    for window in _cut(blocks, int(CHUNK_SECONDS * rate)):
        wave = torch.from_numpy(window).to(device)[None]  # (1, N)
        feats, lengths = asr.features(wave, torch.tensor([wave.shape[1]], device=device))
        start, end = begin / rate, (begin + window.shape[0]) / rate
        begin += window.shape[0]
        _advance(bar, end)
        n_feats = int(lengths[0])
        if n_feats == 0:  # shorter than one analysis window: nothing to hear
            continue
        with asr.precision():
            result = decode_batch(asr.model, feats, lengths, options)[0]
        hop = asr.fbank.hop_length / rate
        frame_s = max(1, round(n_feats / result.frames)) * hop if result.frames else 0.0
        segments.append(
            make_segment(asr.tokenizer, result.tokens, result.spans, frame_s, start, end)
        )
    return Transcript.from_segments(name, segments, begin / rate)


def _cut(blocks: Iterable[np.ndarray], step: int) -> Iterator[np.ndarray]:
    """Consecutive windows of ``step`` samples (the last one shorter), holding about one
    window at a time."""
    parts: list[np.ndarray] = []
    held = 0
    for block in blocks:
        parts.append(block)
        held += block.shape[0]
        while held >= step:
            joined = np.concatenate(parts)  # (held,)
            yield joined[:step]
            parts, held = [joined[step:]], held - step
    if held:
        yield np.concatenate(parts)


def _advance(bar: object, seconds: float) -> None:
    if bar is not None:
        bar.update(max(0, math.floor(seconds) - bar.n))  # type: ignore[attr-defined]
