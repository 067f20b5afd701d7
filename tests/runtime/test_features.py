"""The NumPy log-Mel features equal ``mamba_asr.audio.features.Fbank``'s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_asr.audio.features import Fbank as TorchFbank
from mamba_asr.runtime.features import Fbank, StreamingFbank


def numpy_fbank(fbank: TorchFbank) -> Fbank:
    return Fbank(fbank.mel_fb.numpy(), fbank.sample_rate, fbank.win_length, fbank.hop_length,
                 fbank.n_fft, fbank.log_floor)  # fmt: skip


@pytest.mark.parametrize("n_mels", [80, 40])
def test_numpy_fbank_equals_torch(n_mels):
    rng = np.random.default_rng(n_mels)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    wave[8000:12000] = 1e-5 * rng.standard_normal(4000)  # near silence: the log floor
    torch_fbank = TorchFbank(16000, n_mels)
    expected, _ = torch_fbank(torch.from_numpy(wave)[None])
    got = numpy_fbank(torch_fbank)(wave)
    assert got.dtype == np.float32 and got.shape == expected.shape[1:]
    np.testing.assert_allclose(got, expected[0].numpy(), atol=1e-4, rtol=0)


def test_short_waveform_has_no_frames():
    assert numpy_fbank(TorchFbank())(np.zeros(399, np.float32)).shape == (0, 80)


def test_streaming_equals_whole():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    fbank = numpy_fbank(TorchFbank())
    stream = StreamingFbank(fbank)
    pieces, start = [], 0
    for size in [10, 399, 1, 1600, 5000, 9000]:
        pieces.append(stream.accept(wave[start : start + size]))
        start += size
    np.testing.assert_allclose(np.concatenate(pieces), fbank(wave), atol=1e-5, rtol=0)
