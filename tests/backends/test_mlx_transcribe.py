"""The bundled model through the MLX backend gives the PyTorch path's transcripts token for
token: files offline and streamed (the same ``Stream`` and endpoint rule), a long file cut into
segments, ``evaluate``, the public ``transcribe``, and an exported folder read back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mamba_asr
from helpers.mlx_models import requires_mlx
from mamba_asr.decode import DecodingOptions
from mamba_asr.pretrained import bundled_path
from mamba_asr.transcription import transcribe_file

pytestmark = [
    requires_mlx,
    pytest.mark.slow,
    pytest.mark.skipif(not bundled_path().is_file(), reason="bundled model file not built yet"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello.flac"
SENTENCES = ["THE CAT SAT ON THE MAT", "SHE READS A GOOD BOOK", "OPEN THE BIG DOOR"]
GREEDY, BEAM = DecodingOptions(strategy="greedy"), DecodingOptions()  # beam: the shipped LM


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> list[Path]:
    """hello.flac, three sentences spoken by espeak-ng, and the three in one file with pauses
    of 1.5 s (the endpoint rule cuts it into segments)."""
    folder = tmp_path_factory.mktemp("speech")
    files, waves = [EXAMPLE], []
    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode:
        return files
    for i, text in enumerate(SENTENCES):
        wav = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text.lower()], check=True)
        files.append(wav)
        wave, rate = sf.read(wav, dtype="float32")
        waves += [wave, np.zeros(int(1.5 * rate), np.float32)]
    sf.write(folder / "long.wav", np.concatenate(waves), rate)
    return [*files, folder / "long.wav"]


@pytest.fixture(scope="module")
def models():
    from mamba_asr.backends.mlx import MlxASR

    asr = mamba_asr.load_model(device="cpu")
    return asr, MlxASR.from_asr(asr)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam_lm"])
def test_transcripts_equal_pytorch(models, audio, options) -> None:
    asr, mlx_asr = models
    for path in audio:
        expected = transcribe_file(asr, path, options)
        got = transcribe_file(mlx_asr, path, options)
        assert got.to_json() == expected.to_json(), path  # text, segments, tokens, times
        assert expected.text, path
    if len(audio) > 1:
        assert len(expected.segments) == len(SENTENCES)  # the long file: one per sentence


@pytest.mark.parametrize("chunk_ms", [80, 320])
def test_streams_equal_offline(models, audio, chunk_ms) -> None:
    _, mlx_asr = models
    for path in audio[:2]:
        offline = transcribe_file(mlx_asr, path, BEAM)
        streamed = transcribe_file(mlx_asr, path, BEAM, chunk_ms=chunk_ms)
        assert streamed.to_json() == offline.to_json(), (path, chunk_ms)


def test_stream_api_and_public_transcribe(models) -> None:
    from mamba_asr.audio import load_audio

    asr, mlx_asr = models
    wave = load_audio(EXAMPLE, 16000)
    stream = mlx_asr.create_stream(GREEDY, chunk_ms=160)
    for start in range(0, wave.shape[0], 3000):
        stream.accept_waveform(16000, wave[start : start + 3000])
        mlx_asr.decode_streams([stream])
        assert stream.result.duration == pytest.approx(min(start + 3000, wave.shape[0]) / 16000)
    assert stream.finish().text == transcribe_file(asr, EXAMPLE, GREEDY).text
    assert str(mamba_asr.transcribe(mlx_asr, EXAMPLE, strategy="greedy")) == stream.result.text


def test_evaluate_equals_pytorch(models, audio, tmp_path) -> None:
    from mamba_asr.data import Utterance
    from mamba_asr.evaluate import evaluate

    asr, mlx_asr = models
    texts = ["PLEASE CALL ME BACK WHEN YOU HAVE A MOMENT", *SENTENCES]
    utts = [
        Utterance(id=f"u{i}", audio=str(p), text=t, duration=sf.info(p).duration)
        for i, (p, t) in enumerate(zip(audio, texts, strict=False))
    ]
    want, got = tmp_path / "torch.jsonl", tmp_path / "mlx.jsonl"
    expected = evaluate(asr, utts, want, GREEDY, batch_seconds=20.0)
    result = evaluate(mlx_asr, utts, got, GREEDY, batch_seconds=20.0)  # padded batches
    assert got.read_text() == want.read_text()
    assert (result.wer, result.cer) == (expected.wer, expected.cer)


def test_exported_folder_reads_back(models, tmp_path) -> None:
    from mamba_asr.backends.mlx import MlxASR, export, load

    asr, mlx_asr = models
    out = export(asr, tmp_path / "mlx-model")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "lm.npz", "model.safetensors", "tokenizer",
    ]  # fmt: skip
    loaded = load(out)
    assert isinstance(loaded, MlxASR) and loaded.shipped_lm is not None
    assert transcribe_file(loaded, EXAMPLE).to_json() == transcribe_file(mlx_asr, EXAMPLE).to_json()
    with pytest.raises(FileExistsError, match="already exists"):
        export(asr, out)
    export(mlx_asr, out, overwrite=True)
    with pytest.raises(ValueError, match="not an MLX model folder"):
        load(tmp_path)


def test_streams_decoded_together_equal_each_alone(models, audio, monkeypatch) -> None:
    from mamba_asr.audio import load_audio

    if len(audio) < 3:
        pytest.skip("needs espeak-ng for two more utterances (apt-get install espeak-ng)")
    _, mlx_asr = models
    joined = []
    cat = mlx_asr.model.state_ops.cat
    monkeypatch.setattr(mlx_asr.model.state_ops, "cat", lambda s: joined.append(len(s)) or cat(s))
    waves = [load_audio(p, 16000) for p in audio[:3]]
    streams = [mlx_asr.create_stream(BEAM, chunk_ms=320, name=str(p)) for p in audio[:3]]
    for start in range(0, max(w.shape[0] for w in waves), 8000):
        for stream, wave in zip(streams, waves, strict=True):
            if start < wave.shape[0]:
                stream.accept_waveform(16000, wave[start : start + 8000])
        mlx_asr.decode_streams(streams)  # chunks of one length: one MLX batch
    assert max(joined, default=0) == len(streams)
    for stream, path in zip(streams, audio[:3], strict=True):
        alone = transcribe_file(mlx_asr, path, BEAM, chunk_ms=320)
        assert stream.finish().to_json() == alone.to_json()
