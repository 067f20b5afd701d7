"""Tests for SpecAugment (masks, warp, determinism, eval identity) and speed perturbation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_asr.audio.augment import SpecAugment, speed_perturb, time_warp


def padded_feats(
    lengths: list[int], mels: int = 80, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking features, never 0 on valid frames, exactly 0 on padding."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    feats = torch.randn(len(lengths), max(lengths), mels, generator=gen).abs() + 0.1
    valid = torch.arange(max(lengths))[None, :] < lens[:, None]
    return feats * valid[..., None], lens


def test_eval_mode_is_identity():
    feats, lengths = padded_feats([50, 30])
    aug = SpecAugment().eval()
    assert aug(feats, lengths) is feats


def test_masks_stay_inside_valid_frames():
    feats, lengths = padded_feats([200, 120, 40, 9])
    aug = SpecAugment(time_warp=0, time_width_ratio=0.2).train()
    out = aug(feats, lengths)
    valid = torch.arange(feats.shape[1])[None, :] < lengths[:, None]
    assert (out[~valid] == 0).all()  # padding untouched (it was 0)
    masked = (out == 0) & valid[..., None]
    assert masked.any(), "nothing was masked"
    kept = ~masked & valid[..., None]
    assert torch.equal(out[kept], feats[kept])  # unmasked values are the input's


def test_default_policy_keeps_padding_and_masks_something():
    feats, lengths = padded_feats([400, 250, 30])
    out = SpecAugment().train()(feats, lengths)
    valid = torch.arange(feats.shape[1])[None, :] < lengths[:, None]
    assert (out[~valid] == 0).all()
    assert ((out == 0) & valid[..., None]).any(dim=(1, 2)).all()  # every utterance masked
    assert not torch.equal(out, feats)


def test_mask_shapes_are_bands_and_spans():
    """Masked cells form whole mel bands and whole frames, within the width limits."""
    feats, lengths = padded_feats([300])
    aug = SpecAugment(freq_masks=1, freq_width=10, time_masks=1, time_width_ratio=0.05, time_warp=0)
    for seed in range(20):
        out = aug.train()(feats, lengths, generator=torch.Generator().manual_seed(seed))
        zero = out[0] == 0  # (T, M)
        full_bands = zero.all(dim=0)  # mel bins masked on every frame
        full_frames = zero.all(dim=1)
        assert torch.equal(zero, full_bands[None, :] | full_frames[:, None])
        assert full_bands.sum() <= 10 and full_frames.sum() <= 15


def test_deterministic_under_a_generator_and_the_global_seed():
    feats, lengths = padded_feats([150, 100])
    aug = SpecAugment().train()
    a = aug(feats, lengths, generator=torch.Generator().manual_seed(7))
    b = aug(feats, lengths, generator=torch.Generator().manual_seed(7))
    c = aug(feats, lengths, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = aug(feats, lengths)
    torch.manual_seed(3)
    assert torch.equal(aug(feats, lengths), d)


def test_time_warp_keeps_ends_and_padding():
    gen = torch.Generator().manual_seed(0)
    frames = torch.arange(60, dtype=torch.float32)
    feats = frames[None, :, None].repeat(3, 1, 2)  # value = frame index
    lengths = torch.tensor([60, 40, 12])
    feats[1, 40:] = 0
    feats[2, 12:] = 0
    moved = False
    for _ in range(20):
        out = time_warp(feats, lengths, window=5, generator=gen)
        for i, n in enumerate(lengths.tolist()):
            values = out[i, :n, 0]
            assert values[0] == 0 and values[-1] == n - 1  # end points stay
            assert (values.diff() > 0).all()  # monotone: a warp, not a shuffle
            assert (out[i, n:] == 0).all()
            moved |= not torch.equal(values, frames[:n])
        assert torch.equal(out[2], feats[2])  # 12 <= 2 * 5 + 2 frames: not warped
    assert moved, "the warp never moved anything"


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_and_pitch(factor):
    rate, freq = 16000, 500.0
    wave = (0.5 * np.sin(2 * np.pi * freq * np.arange(rate) / rate)).astype(np.float32)
    out = speed_perturb(wave, rate, factor)
    assert out.dtype == np.float32
    assert abs(len(out) - rate / factor) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak = np.argmax(spectrum) * rate / len(out)
    assert abs(peak - freq * factor) < 3


def test_speed_perturb_identity_and_errors():
    wave = np.ones(100, np.float32)
    assert speed_perturb(wave, 16000, 1.0) is wave
    with pytest.raises(ValueError, match="speed factor"):
        speed_perturb(wave, 16000, 0.0)
