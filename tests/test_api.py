"""The public API: load_model and transcribe, on a tiny model trained for a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import mamba_asr
from mamba_asr.asr import ASR
from mamba_asr.config import load_recipe
from mamba_asr.text import CharTokenizer

TINY = [
    "model.vocab_size=6", "model.d_model=32", "model.nhead=2", "model.num_encoder_layers=1",
    "model.d_ffn=64", "model.kernel_size=5", "model.frontend.channels=[4, 4]",
    "tokenizer.alphabet='AB '",
]  # fmt: skip


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    asr = ASR(load_recipe("hparams/CTC/conmamba_large.yaml", TINY), CharTokenizer("AB "))
    return asr.save(tmp_path / "model.pt")


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
    assert isinstance(from_array, str) and set(from_array) <= set("AB ")
    assert from_array == from_tensor
    expected = model.transcribe_batch(torch.from_numpy(wave)[None], torch.tensor([16000]))[0]
    assert mamba_asr.transcribe(model, wave) == expected
    assert isinstance(from_file, str)


def test_errors_are_plain(model_file, tmp_path):
    model = mamba_asr.load_model(model_file, device="cpu")
    with pytest.raises(ValueError, match="mono waveform"):
        mamba_asr.transcribe(model, np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="nope.wav"):
        mamba_asr.transcribe(model, tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="unknown model .*missing.pt.*not a file"):
        mamba_asr.load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="strategy must be one of"):
        mamba_asr.transcribe(model, np.zeros(16000, dtype=np.float32), strategy="sample")
