"""Streams as objects: audio in as it arrives, partial and final transcripts out.

Shape key
    t: feature frames of a chunk, C: mel bins, t': encoder frames of the chunk, M: d_model.

In the style of sherpa-onnx's online recognizer::

    stream = asr.create_stream()                  # options as DecodingOptions, chunk_ms
    stream.accept_waveform(sample_rate, samples)  # any rate, float or integer PCM, any size
    asr.decode_streams([stream, ...])             # decode what is ready, streams in one batch
    stream.result                                 # the Transcript so far (partial)
    transcript = stream.finish()                  # end of input: the final Transcript

``accept_waveform`` resamples (soxr, streaming) and keeps the samples; ``decode_streams`` turns
the new samples of all its streams into normalised feature frames in one batched call
(``StreamingFbank.accept_many``, equal to the offline frames), then runs the model's
streaming step (``forward_chunk``, ``mamba_asr.models.streaming``) on one chunk of
``chunk_ms`` (rounded down to whole encoder frames) of every stream that has one, streams with
chunks of the same length in one batch, then each stream's search (greedy or beam with LM
fusion, ``mamba_asr.decode``) frame by frame. After every encoder frame the endpoint rule
(``mamba_asr.decode.endpoint``) may end the segment: its text is kept, and the encoder and the
search start again from a fresh state at that frame (the frames of the chunk after it are
encoded anew), so an hour of audio is decoded as the short segments the model was trained on,
and where a segment ends does not depend on the chunk size: any chunking gives the same
transcript, and a stream decoded in a batch gives what it gives alone.

Memory does not grow with the length of the audio, save for the text of the transcript.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import soxr
import torch
from torch import Tensor, nn

from mamba_asr.audio.io import as_waveform
from mamba_asr.audio.stream import StreamingFbank
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.decode.streaming import make_search
from mamba_asr.decode.transducer import BeamSearch, GreedySearch
from mamba_asr.models.streaming import StateOps
from mamba_asr.transcript import Segment, SegmentedResults, Transcript

ASR = nn.Module  # an ``mamba_asr.asr.ASR`` bundle (this module sits below it and imports it not)

__all__ = ["STREAM_CHUNK_MS", "Stream", "compute_features", "decode_streams", "stream_chunk_frames"]

STREAM_CHUNK_MS = 320.0


def stream_chunk_frames(asr: ASR, chunk_ms: float) -> int:
    """Feature frames per streaming step: ``chunk_ms`` rounded down to whole encoder frames;
    a one-line ``ValueError`` below one encoder frame or for a model that does not stream."""
    check_streams(asr)
    subsampling = asr.model.subsampling
    hop_ms = 1000 * asr.fbank.hop_length / asr.sample_rate
    if not isinstance(chunk_ms, (int, float)) or not np.isfinite(chunk_ms):
        raise ValueError(f"chunk_ms must be a number of milliseconds, got {chunk_ms!r}")
    frames = int(chunk_ms / hop_ms + 1e-9) // subsampling * subsampling
    if frames < 1:
        raise ValueError(
            f"chunk_ms must be at least {subsampling * hop_ms:g} (one encoder frame of this "
            f"model), got {chunk_ms:g}"
        )
    return frames


def check_streams(asr: ASR) -> None:
    """A one-line ``ValueError`` unless ``asr``'s model streams (a causal transducer)."""
    model = asr.model
    if not hasattr(model, "forward_chunk") or not hasattr(model, "joiner"):
        raise ValueError(
            f"streaming needs a transducer model, this one is {asr.config.model.kind} "
            "(transcribe it without --stream)"
        )
    try:
        model.init_state(1)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class Stream(SegmentedResults):
    """One audio stream being recognised; see the module docstring. Made by
    ``ASR.create_stream``; ``name`` becomes the transcript's ``file``."""

    def __init__(
        self,
        asr: ASR,
        options: DecodingOptions,
        chunk_ms: float = STREAM_CHUNK_MS,
        endpoint: EndpointConfig | None = None,
        name: str | None = None,
    ) -> None:
        self.chunk_frames = stream_chunk_frames(asr, chunk_ms)
        if not options.resolved:
            raise ValueError("Stream needs resolved options (ASR.create_stream resolves them)")
        self.asr, self.model, self.options, self.name = asr, asr.model, options, name
        self.endpoint = endpoint or EndpointConfig()
        self.device = next(asr.parameters()).device
        self.frame_seconds = self.model.subsampling * asr.fbank.hop_length / asr.sample_rate
        self.fbank = StreamingFbank(asr.fbank)
        self.pending = torch.zeros(1, 0, asr.fbank.n_mels, device=self.device)  # (1, t, C)
        self.queued: list[np.ndarray] = []  # samples not yet turned into features
        self.queued_samples = 0
        self.resampler: soxr.ResampleStream | None = None
        self.input_rate: int | None = None
        self.samples = 0  # at the model's rate, turned into features
        self.segments: list[Segment] = []
        self.finished = False
        self._restart(0)

    # --- input ------------------------------------------------------------------------------

    def accept_waveform(self, sample_rate: int, samples: Any) -> None:
        """Append mono ``samples`` (float in [-1, 1], or integer PCM) at ``sample_rate``."""
        if self.finished:
            raise RuntimeError("accept_waveform() after finish(): create a new stream")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if self.input_rate is not None and sample_rate != self.input_rate:
            raise ValueError(
                f"sample_rate changed within a stream ({self.input_rate} -> {sample_rate})"
            )
        self.input_rate = int(sample_rate)
        wave = as_waveform(samples, self.name or "waveform")
        rate = self.asr.sample_rate
        if sample_rate != rate:
            if self.resampler is None:
                self.resampler = soxr.ResampleStream(
                    sample_rate, rate, 1, dtype="float32", quality="HQ"
                )
            wave = self.resampler.resample_chunk(wave, last=False)
        self._accept(wave)

    def _accept(self, wave: np.ndarray) -> None:
        """Samples (n,) at the model's rate, queued for ``compute_features``."""
        if wave.shape[0] == 0:
            return
        self.samples += wave.shape[0]
        self.queued.append(wave)
        self.queued_samples += wave.shape[0]

    @property
    def _frames(self) -> int:
        """Feature frames to decode: pending, and those the queued samples make."""
        have = self.fbank.buffer.shape[1] + self.queued_samples
        fbank = self.asr.fbank
        made = 0 if have < fbank.win_length else 1 + (have - fbank.win_length) // fbank.hop_length
        return self.pending.shape[1] + made

    @property
    def ready(self) -> bool:
        """Whether a chunk can be decoded now (a whole one, or the rest after ``finish``)."""
        n = self._frames
        return n >= self.chunk_frames or (self.finished and n > 0)

    @property
    def samples_needed(self) -> int:
        """Samples (at the model's rate) still to accept before a whole chunk is ready."""
        frames = self.chunk_frames - self.pending.shape[1]
        if frames <= 0:
            return 0
        fbank = self.asr.fbank
        have = self.fbank.buffer.shape[1] + self.queued_samples
        return max(0, (frames - 1) * fbank.hop_length + fbank.win_length - have)

    def take_chunk(self) -> Tensor:
        """The next chunk of pending frames (1, t, C), removed from the stream."""
        if self.queued:
            compute_features([self])
        n = min(self.chunk_frames, self.pending.shape[1])
        chunk, self.pending = self.pending[:, :n], self.pending[:, n:]
        return chunk

    # --- decoding -------------------------------------------------------------------------------

    def _restart(self, frame: int) -> None:
        """A new segment from encoder frame ``frame`` (of the stream): fresh state and search."""
        self.state = self.model.init_state(1, device=self.device)
        with getattr(self.asr, "precision", contextlib.nullcontext)():  # the predictor's start
            self.search: GreedySearch | BeamSearch = make_search(
                self.model, 1, self.options, device=self.device
            )
        self.segment_start = frame

    def advance(self, feats: Tensor, proj: Tensor, state: Any) -> None:
        """Search proj (1, t', J), the joiner's projection of what the model made of feats
        (1, t, C) from ``self.state``; ``state``: the model's state after them. Ends the
        segment where the endpoint rule says (``_end_segment``)."""
        self.state = state
        active = torch.ones(1, dtype=torch.bool, device=self.device)
        for t in range(proj.shape[1]):
            self.search.advance(proj[:, t], active)
            if self.endpoint.reached(self.search.frame, self._last_token(), self.frame_seconds):
                self._end_segment(feats, t + 1)
                return

    def _end_segment(self, feats: Tensor, used: int) -> None:
        """The endpoint after ``used`` encoder frames of the chunk feats (1, t, C): keep the
        segment, start a fresh one, and put the chunk's frames after the end back at the front
        of ``pending``, to be encoded from the fresh state in the next chunk (with other
        streams' chunks, in ``decode_streams``'s next round)."""
        self._close_segment()
        self._restart(self.segment_start + self.search.frame)
        rest = feats[:, used * self.model.subsampling :]
        self.pending = torch.cat([rest, self.pending], dim=1)

    def _last_token(self) -> int | None:
        """The frame (in the segment) of the best hypothesis's last token."""
        search = self.search
        if isinstance(search, GreedySearch):
            frames = search.frames[0]
        else:
            frames = search.frames[int(search.scores.argmax())]
        return frames[-1] if frames else None

    @torch.no_grad()
    def finish(self) -> Transcript:
        """End of input: decode what is left and return the final transcript (again the same
        on later calls)."""
        if not self.finished:
            if self.resampler is not None:
                self._accept(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self.finished = True
            decode_streams([self])
            self._close_segment()
        return self.result


@torch.no_grad()
def compute_features(streams: Sequence[Stream]) -> None:
    """The queued samples of ``streams`` (all of one model) -> normalised feature frames at the
    end of each one's ``pending``, in one batched call; the frames each gets alone."""
    todo = [s for s in streams if s.queued]
    if not todo:
        return
    if any(s.asr is not todo[0].asr for s in todo):
        raise ValueError("compute_features: all streams must come from the same model")
    waves = []
    for s in todo:
        wave = s.queued[0] if len(s.queued) == 1 else np.concatenate(s.queued)
        waves.append(torch.from_numpy(np.ascontiguousarray(wave)))
        s.queued, s.queued_samples = [], 0
    feats = StreamingFbank.accept_many([s.fbank for s in todo], waves)  # each (1, t_i, C)
    counts = [f.shape[1] for f in feats]
    if not sum(counts):
        return
    normed = todo[0].asr.cmvn(torch.cat(feats, dim=1))  # (1, sum t_i, C)
    for s, f in zip(todo, normed.split(counts, dim=1), strict=True):
        if f.shape[1]:
            s.pending = f if s.pending.shape[1] == 0 else torch.cat([s.pending, f], dim=1)


@torch.no_grad()
def decode_streams(streams: Sequence[Stream]) -> None:
    """Decode every chunk that is ready in ``streams`` (all of one model): streams whose chunks
    have the same length go through the model's streaming step in one batch; each stream's
    result equals what decoding it alone gives."""
    if not streams:
        return
    model = streams[0].model
    if any(s.model is not model for s in streams):
        raise ValueError("decode_streams: all streams must come from the same model")
    compute_features(streams)
    precision = getattr(streams[0].asr, "precision", contextlib.nullcontext)
    with precision():  # the model's steps and the searches in the bundle's precision
        _decode_ready(streams, model)


def _decode_ready(streams: Sequence[Stream], model: Any) -> None:
    """decode_streams after the features: every ready chunk, batched by chunk length."""
    ops: StateOps | None = None
    while True:
        groups: dict[int, list[tuple[Stream, Tensor]]] = defaultdict(list)
        for s in streams:
            if s.ready:
                chunk = s.take_chunk()
                groups[chunk.shape[1]].append((s, chunk))
        if not groups:
            return
        for group in groups.values():
            if len(group) == 1:
                s, chunk = group[0]
                memory, state = model.forward_chunk(chunk, s.state)
                s.advance(chunk, model.joiner.project_encoder(memory), state)
                continue
            if ops is None:  # a model of another array library brings its own
                ops = getattr(model, "state_ops", None) or StateOps(
                    model.init_state, group[0][0].device
                )
            feats = torch.cat([c for _, c in group])  # (B, t, C)
            memory, state = model.forward_chunk(feats, ops.cat([s.state for s, _ in group]))
            states = ops.split(state, [1] * len(group))
            proj = model.joiner.project_encoder(memory)  # (B, t', J)
            if all(type(s.search) is GreedySearch for s, _ in group):
                _advance_greedy(group, proj, states)
                continue
            for i, (s, chunk) in enumerate(group):
                s.advance(chunk, proj[i : i + 1], states[i])


def _advance_greedy(group: list[tuple[Stream, Tensor]], proj: Tensor, states: list[Any]) -> None:
    """``Stream.advance`` of every stream of ``group`` at once, their greedy searches stacked
    into one batch frame by frame; each stream ends its segment where it would alone.
    proj: (B, t', J), the joiner's projection of the group's chunks."""
    streams = [s for s, _ in group]
    search = GreedySearch.stack([s.search for s in streams])
    batch, frames = proj.shape[0], proj.shape[1]
    active = torch.ones(batch, dtype=torch.bool, device=proj.device)
    used = [frames] * batch  # frames each stream consumed in this chunk
    for t in range(frames):
        search.advance(proj[:, t], active)
        for i in active.nonzero().squeeze(1).tolist():
            s, tokens = streams[i], search.frames[i]
            last = tokens[-1] if tokens else None
            if s.endpoint.reached(search.base[i] + t + 1, last, s.frame_seconds):
                active[i], used[i] = False, t + 1
        if not bool(active.any()):
            break
    for s, row, state, (_, chunk), n in zip(
        streams, search.unstack(used), states, group, used, strict=True
    ):
        s.state, s.search = state, row
        if n < frames:  # the endpoint: as Stream.advance
            s._end_segment(chunk, n)
