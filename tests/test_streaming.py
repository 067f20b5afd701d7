"""The public streaming API: streams as objects, many streams in one batch, endpointing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.recipes import tiny_asr
from mamba_asr.asr import ASR
from mamba_asr.decode import DecodingOptions, EndpointConfig
from mamba_asr.models.streaming import StateOps, StreamingModel
from mamba_asr.transcription import transcribe_file, transcribe_waveform

GREEDY = DecodingOptions(strategy="greedy")
SHORT = EndpointConfig(silence_after_speech=0.24, max_segment=1.2)  # many segments


@pytest.fixture(scope="module")
def asr() -> ASR:
    return tiny_asr("transducer", blank_bias=0.2)  # emits often, both searches


def _signal(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Bursts of tone and noise with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    bursts = np.sin(2 * np.pi * 0.4 * t + seed) > 0.2
    wave = 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t) * bursts
    return (wave + 0.02 * rng.standard_normal(t.shape[0])).astype(np.float32)


def _feed(stream, wave: np.ndarray, rate: int, rng: np.random.Generator) -> None:
    """``wave`` in pieces of random size."""
    i = 0
    while i < wave.shape[0]:
        n = int(rng.integers(1, rate // 2))
        stream.accept_waveform(rate, wave[i : i + n])
        i += n


def test_the_model_follows_the_streaming_protocol(asr):
    assert isinstance(asr.model, StreamingModel) and asr.model.subsampling == 8
    ops = StateOps(asr.model.init_state)
    states = [asr.model.init_state(n) for n in (1, 2, 3)]
    for a, b in zip(ops.split(ops.cat(states), [1, 2, 3]), states, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [leaf for part in tree for leaf in _leaves(part)]


@pytest.mark.parametrize("options", [GREEDY, DecodingOptions(beam_size=3)])
def test_a_stream_in_random_pieces_equals_the_file(asr, tmp_path, options):
    wave = _signal(6.0, 22050, seed=1)
    path = tmp_path / "a.wav"
    sf.write(path, (wave * 32767).astype(np.int16), 22050, subtype="PCM_16")
    offline = transcribe_file(asr, path, options, endpoint=SHORT)
    stream = asr.create_stream(options, chunk_ms=240, endpoint=SHORT, name=str(path))
    pcm = (wave * 32767).astype(np.int16)
    rng = np.random.default_rng(0)
    for part in np.array_split(pcm, 7):
        _feed(stream, part, 22050, rng)
        asr.decode_streams([stream])
        partial = stream.result
        assert partial.duration <= offline.duration + 1e-9
    final = stream.finish()
    assert offline.tokens, "the seeded model should emit tokens"
    assert len(offline.segments) > 1, "the short endpoint rule should cut segments"
    assert final.to_json() == offline.to_json()
    assert stream.finish() is not final and stream.finish().to_json() == final.to_json()
    with pytest.raises(RuntimeError, match="after finish"):
        stream.accept_waveform(22050, pcm[:10])


@pytest.mark.parametrize("chunk_ms", [80, 320, 1000, 30000])
def test_where_segments_end_does_not_depend_on_the_chunk(asr, chunk_ms):
    wave = _signal(9.0, 16000, seed=2)
    reference = transcribe_waveform(asr, wave, 16000, GREEDY, chunk_ms=160, endpoint=SHORT)
    got = transcribe_waveform(asr, wave, 16000, GREEDY, chunk_ms=chunk_ms, endpoint=SHORT)
    assert len(reference.segments) > 2
    assert got.segments == reference.segments
    for a, b in zip(reference.segments, reference.segments[1:], strict=False):
        assert a.end <= b.start + 1e-9  # in order, not overlapping


def test_many_streams_in_one_batch_equal_each_alone(asr):
    waves = [_signal(s, 16000, seed=i) for i, s in enumerate((3.0, 5.5, 4.2))]
    alone = []
    for wave in waves:
        s = asr.create_stream(GREEDY, endpoint=SHORT)
        s.accept_waveform(16000, wave)
        alone.append(s.finish())
    streams = [asr.create_stream(GREEDY, endpoint=SHORT) for _ in waves]
    rng = np.random.default_rng(3)
    pos = [0] * len(waves)
    calls = 0
    while any(p < w.shape[0] for p, w in zip(pos, waves, strict=True)):
        for i, (s, w) in enumerate(zip(streams, waves, strict=True)):
            n = int(rng.integers(1000, 9000))
            if pos[i] < w.shape[0]:
                s.accept_waveform(16000, w[pos[i] : pos[i] + n])
                pos[i] += n
        asr.decode_streams(streams)
        calls += 1
    together = [s.finish() for s in streams]
    assert calls > 5
    assert max(len(a.segments) for a in alone) > 1  # segments end inside batched chunks
    for a, b in zip(alone, together, strict=True):
        assert a.to_json() == b.to_json()


def test_streams_in_a_batch_share_one_model_step(asr, monkeypatch):
    batches = []
    step = asr.model.forward_chunk

    def spy(feats, state):
        batches.append(feats.shape[0])
        return step(feats, state)

    monkeypatch.setattr(asr.model, "forward_chunk", spy)
    streams = [asr.create_stream(GREEDY) for _ in range(3)]
    for s in streams:
        s.accept_waveform(16000, _signal(1.0, 16000, seed=4))
    asr.decode_streams(streams)
    assert batches and set(batches) == {3}


def test_features_of_a_batch_come_from_one_call(asr, monkeypatch):
    calls = []
    fbank = asr.fbank.forward

    def spy(wave, lengths=None):
        calls.append(wave.shape[0])
        return fbank(wave, lengths)

    monkeypatch.setattr(asr.fbank, "forward", spy)
    streams = [asr.create_stream(GREEDY) for _ in range(3)]
    for i, s in enumerate(streams):
        s.accept_waveform(16000, _signal(0.5, 16000, seed=i)[: 4000 + 1000 * i])
        s.accept_waveform(16000, _signal(0.5, 16000, seed=i)[:3000])
    assert not calls  # samples are kept until decoding
    assert all(s.ready for s in streams) and streams[0].samples_needed == 0
    asr.decode_streams(streams)
    assert calls == [3]


def test_silence_keeps_resetting():
    """Without speech, rule 1 ends a segment every 2.4 s: no text, fresh state."""
    asr = tiny_asr("transducer", blank_bias=5.0)  # hears nothing
    stream = asr.create_stream(GREEDY)
    quiet = np.zeros(16000 * 10, np.float32)
    stream.accept_waveform(16000, quiet)
    asr.decode_streams([stream])
    assert stream.segment_start == 120  # reset every 2.4 s (30 frames of 80 ms): 4 times in 10 s
    assert stream.result.text == "" and stream.finish().segments == []


def test_stream_errors_are_one_line(asr):
    stream = asr.create_stream()
    stream.accept_waveform(16000, np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="sample_rate changed within a stream"):
        stream.accept_waveform(8000, np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        stream.accept_waveform(16000, np.full(10, np.nan, np.float32))
    with pytest.raises(ValueError, match="mono waveform"):
        stream.accept_waveform(16000, np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="endpoint silence_after_speech must be > 0"):
        EndpointConfig(silence_after_speech=0)
    with pytest.raises(ValueError, match="chunk_ms must be at least 80"):
        asr.create_stream(chunk_ms=50)


def test_a_model_that_does_not_stream_has_no_streams():
    ctc = tiny_asr("ctc")
    with pytest.raises(ValueError, match="streaming needs a transducer model, this one is ctc"):
        ctc.create_stream()
