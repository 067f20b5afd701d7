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


@pytest.mark.parametrize("n_mels", [80, 40, 128])
def test_the_mel_sums_by_segments_equal_the_matrix_product(n_mels):
    """The triangles summed over their bins (``mel_segments``) give the product with the mel
    matrix, within float32 rounding; a matrix that is not such triangles takes the product."""
    from mamba_asr.runtime.features import mel_segments

    mel_fb = TorchFbank(16000, n_mels).mel_fb.numpy()
    assert mel_segments(mel_fb) is not None
    power = np.random.default_rng(1).random((32, mel_fb.shape[0]), np.float32) * 100
    fbank = Fbank(mel_fb)
    got = np.empty((32, n_mels), np.float32)
    for parity, (weights, starts) in enumerate(fbank.segments):
        got[:, parity::2] = np.add.reduceat(power * weights, starts, axis=1)
    np.testing.assert_allclose(got, power @ mel_fb, rtol=1e-5, atol=1e-6)
    dense = mel_fb.copy()
    dense[:, 0] = 0.01  # a mel over every bin
    assert mel_segments(dense) is None and Fbank(dense).segments is None
    wave = np.random.default_rng(2).standard_normal(4000).astype(np.float32)
    with_segments, plain = Fbank(mel_fb)(wave), Fbank(mel_fb)
    plain.segments = None
    np.testing.assert_allclose(with_segments, plain(wave), rtol=0, atol=1e-5)
