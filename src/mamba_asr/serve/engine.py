"""What the server asks of a model, for either runtime: PyTorch (``mamba_asr.asr.ASR``) or
onnxruntime (``mamba_asr.runtime.onnx.OnnxASR``).

Shape key
    n: samples (mono, float32, at the model's rate).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mamba_asr.decode import DecodingOptions
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.streaming import STREAM_CHUNK_MS
from mamba_asr.transcript import Segment, Transcript
from mamba_asr.transcription import OFFLINE_CHUNK_MS, streams, transcribe_waveform

__all__ = ["Engine"]


@dataclass
class Engine:
    """A loaded model with the decoding options, chunk and endpoint rules the server uses.

    ``asr``: an ``ASR`` or an ``OnnxASR``; ``name``: the model's id (``/v1/models``);
    ``options``: resolved ``DecodingOptions``.
    """

    asr: Any
    name: str
    options: DecodingOptions
    chunk_ms: float = STREAM_CHUNK_MS
    endpoint: EndpointConfig | None = None

    def __post_init__(self) -> None:
        self.options = self.asr.resolve_options(self.options)
        self.onnx = hasattr(self.asr, "transcribe_waveform")  # OnnxASR: a streaming export
        self.streaming = self.onnx or streams(self.asr)
        if self.streaming:  # a chunk too short for the model: one line, at start-up
            self.asr.create_stream(self.options, self.chunk_ms, self.endpoint)

    @property
    def sample_rate(self) -> int:
        return int(self.asr.sample_rate)

    def create_stream(self, chunk_ms: float | None = None) -> Any:
        """A new stream (``Stream`` or ``OnnxStream``) with the server's options."""
        return self.asr.create_stream(self.options, chunk_ms or self.chunk_ms, self.endpoint)

    def decode_streams(self, streams: Sequence[Any], max_batch: int | None = None) -> None:
        """Decode what is ready in ``streams``: through the model in batches of up to
        ``max_batch`` streams (PyTorch; all in one by default), one by one on onnxruntime."""
        if not streams:
            return
        decode = getattr(self.asr, "decode_streams", None)
        if decode is None:
            for s in streams:
                s.decode()
            return
        step = max_batch or len(streams)
        for i in range(0, len(streams), step):
            decode(list(streams[i : i + step]))

    def transcribe(self, wave: np.ndarray, rate: int) -> Transcript:
        """The offline transcript of ``wave`` (n,) at ``rate``: what ``mamba-asr transcribe``
        gives for the same audio and options."""
        if self.onnx:
            return self.asr.transcribe_waveform(wave, rate, self.options)
        return transcribe_waveform(self.asr, wave, rate, self.options)

    def segments(self, wave: np.ndarray, rate: int) -> Iterator[Segment | Transcript]:
        """Each segment of ``wave`` as soon as it is decoded, then the whole ``Transcript``
        (equal to ``transcribe``'s). A model that does not stream gives its one transcript."""
        if not self.streaming:
            transcript = self.transcribe(wave, rate)
            yield from transcript.segments
            yield transcript
            return
        stream = self.create_stream(OFFLINE_CHUNK_MS)
        step = max(1, round(rate * OFFLINE_CHUNK_MS / 1000))
        done = 0
        for i in range(0, wave.shape[0], step):
            stream.accept_waveform(rate, wave[i : i + step])
            self.decode_streams([stream])
            yield from stream.segments[done:]
            done = len(stream.segments)
        transcript = stream.finish()
        yield from stream.segments[done:]
        yield transcript
