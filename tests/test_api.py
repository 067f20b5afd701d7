"""The public API: load_model and transcribe, on a tiny model trained for a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import mamba_asr
from helpers.recipes import tiny_asr
from mamba_asr.cli import main
from mamba_asr.transcript import Transcript


def _noise(seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture
def model_file(tmp_path):
    return tiny_asr("ctc").save(tmp_path / "model.pt")


def test_load_and_transcribe_file_array_and_tensor(model_file, tmp_path):
    model = mamba_asr.load_model(model_file, device="cpu")
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    stereo_48k = np.stack([wave, wave], axis=1).repeat(3, axis=0)  # 48 kHz, 2 channels
    path = tmp_path / "a.wav"
    sf.write(path, stereo_48k, 48000)
    from_array = mamba_asr.transcribe(model, wave, strategy="greedy")
    from_tensor = mamba_asr.transcribe(model, torch.from_numpy(wave), strategy="greedy")
    from_file = mamba_asr.transcribe(model, path, strategy="greedy")
    assert isinstance(from_array, Transcript) and set(str(from_array)) <= set("AB ")
    assert from_array.to_json() == from_tensor.to_json()
    expected = model.transcribe_batch(torch.from_numpy(wave)[None], torch.tensor([16000]))[0]
    assert str(mamba_asr.transcribe(model, wave)) == expected
    assert isinstance(from_file, Transcript) and from_file.file == str(path)


def test_api_returns_what_the_cli_prints(model_file, tmp_path, capsys):
    model = mamba_asr.load_model(model_file, device="cpu")
    path = tmp_path / "a.wav"
    sf.write(path, _noise(3.0, 22050), 22050)
    for strategy in ("greedy", "beam"):
        argv = ["transcribe", str(path), "--model", str(model_file), "--format", "json"]
        assert main([*argv, "--strategy", strategy, "--device", "cpu"]) == 0
        printed = capsys.readouterr().out
        assert mamba_asr.transcribe(model, path, strategy=strategy).to_json() + "\n" == printed


def test_waveforms_any_rate_integer_pcm_and_bytes(model_file, tmp_path):
    model = mamba_asr.load_model(model_file, device="cpu")
    wave = _noise(2.0, 8000)
    pcm = np.round(wave * 32767).astype(np.int16)
    path = tmp_path / "a.wav"
    sf.write(path, pcm, 8000, subtype="PCM_16")
    from_file = mamba_asr.transcribe(model, path, strategy="greedy")
    from_pcm = mamba_asr.transcribe(model, pcm, sample_rate=8000, strategy="greedy")
    from_float = mamba_asr.transcribe(model, pcm / 32768.0, sample_rate=8000, strategy="greedy")
    from_bytes = mamba_asr.transcribe(model, path.read_bytes(), strategy="greedy")
    assert from_file.segments == from_pcm.segments == from_float.segments == from_bytes.segments
    assert from_pcm.duration == pytest.approx(2.0)
    as_int32 = mamba_asr.transcribe(model, pcm.astype(np.int32) << 16, sample_rate=8000)
    assert as_int32.text == mamba_asr.transcribe(model, pcm, sample_rate=8000).text
    quiet = mamba_asr.transcribe(model, np.full(8000, 128, np.uint8), sample_rate=8000)
    assert quiet.duration == pytest.approx(1.0)


def test_errors_are_plain(model_file, tmp_path):
    model = mamba_asr.load_model(model_file, device="cpu")
    with pytest.raises(ValueError, match="mono waveform"):
        mamba_asr.transcribe(model, np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="nope.wav"):
        mamba_asr.transcribe(model, tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="unknown model .*missing.pt.*not a file"):
        mamba_asr.load_model(tmp_path / "missing.pt")
    for bad in (np.nan, np.inf):
        wave = np.zeros(16000, dtype=np.float32)
        wave[5] = bad
        with pytest.raises(ValueError, match="NaN and|infinite"):
            mamba_asr.transcribe(model, wave)
    with pytest.raises(ValueError, match="dtype"):
        mamba_asr.transcribe(model, np.array(["a", "b"]))
    with pytest.raises(ValueError, match="sample_rate"):
        mamba_asr.transcribe(model, np.zeros(100, np.float32), sample_rate=0)
    with pytest.raises(ValueError, match="not readable audio"):
        mamba_asr.transcribe(model, b"not audio at all")
    with pytest.raises(ValueError, match="lm_weight must be a finite number"):
        mamba_asr.transcribe(model, np.zeros(16000, np.float32), lm_weight=float("nan"))
    with pytest.raises(ValueError, match="strategy must be one of"):
        mamba_asr.transcribe(model, np.zeros(16000, dtype=np.float32), strategy="sample")
