"""Training-time augmentation: SpecAugment on features, speed perturbation on waveforms.

Shape key
    B: batch, T: frames, M: mel bins, K: masks, N: samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mamba_asr.audio.io import resample
from mamba_asr.modules.masks import length_mask

__all__ = ["SpecAugment", "speed_perturb"]


class SpecAugment(nn.Module):
    """Time warp, frequency masks and time masks on normalised features (B, T, M).

    In training mode, for each utterance and inside its own valid frames only:

    - time warp (``time_warp`` = W frames): a frame ``c`` in ``[W + 1, len - W - 1)`` moves
      by ``d`` in ``[-W, W]``; frames ``[0, c]`` stretch to ``[0, c + d]`` and
      ``[c, len - 1]`` to ``[c + d, len - 1]``, by linear interpolation. Skipped for
      utterances of ``<= 2 W + 2`` frames and when ``time_warp`` is 0;
    - ``freq_masks`` bands of ``[0, freq_width]`` mel bins set to 0;
    - ``time_masks`` spans of ``[0, max_width]`` frames set to 0, ``max_width`` being
      ``time_width_ratio * len`` capped at ``time_width`` frames (when given).

    Defaults follow ESPnet's LibriSpeech Conformer recipe (2 x 27 bins of 80, 10 spans of up to
    5 % of the utterance, warp window 5). Masked values are 0, the mean of normalised
    features. In eval mode the input comes back unchanged. Randomness comes from ``generator``
    (on the features' device) when given, else from the global torch seed.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 10,
        time_width_ratio: float = 0.05,
        time_width: int | None = None,
        time_warp: int = 5,
    ) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_warp) < 0:
            raise ValueError("SpecAugment mask counts, widths and time_warp must be >= 0")
        if not 0.0 <= time_width_ratio <= 1.0:
            raise ValueError(f"time_width_ratio must be in [0, 1], got {time_width_ratio}")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width_ratio = time_masks, time_width_ratio
        self.time_width, self.time_warp = time_width, time_warp

    def forward(
        self, feats: Tensor, lengths: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """feats: (B, T, M), lengths: (B,) valid frames -> (B, T, M); identity in eval mode."""
        if not self.training:
            return feats
        lengths = lengths.to(feats.device)
        if self.time_warp > 0:
            feats = time_warp(feats, lengths, self.time_warp, generator)
        n_mels = torch.full_like(lengths, feats.shape[2])
        freq = _span_mask(n_mels, feats.shape[2], self.freq_masks, self.freq_width, generator)
        max_width = (lengths * self.time_width_ratio).floor().long()
        if self.time_width is not None:
            max_width = max_width.clamp_max(self.time_width)
        time = _span_mask(lengths, feats.shape[1], self.time_masks, max_width, generator)
        dropped = freq[:, None, :] | time[:, :, None]  # (B, T, M)
        return feats.masked_fill(dropped, 0.0)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width_ratio={self.time_width_ratio}, "
            f"time_width={self.time_width}, time_warp={self.time_warp}"
        )


def _span_mask(
    lengths: Tensor,
    size: int,
    count: int,
    max_width: Tensor | int,
    generator: torch.Generator | None,
) -> Tensor:
    """(B, size) bool, True inside ``count`` random spans per row, each within [0, lengths).

    Widths are uniform in [0, max_width] (clipped to the row's length), starts uniform over
    the positions where the span fits.
    """
    batch, device = lengths.shape[0], lengths.device
    if count == 0:
        return torch.zeros(batch, size, dtype=torch.bool, device=device)
    max_width = torch.as_tensor(max_width, device=device).expand(batch).minimum(lengths)
    u = torch.rand(2, batch, count, device=device, generator=generator)  # (2, B, K)
    width = (u[0] * (max_width[:, None] + 1)).floor().long()  # (B, K)
    start = (u[1] * (lengths[:, None] - width + 1)).floor().long()  # (B, K)
    pos = torch.arange(size, device=device)[None, None, :]  # (1, 1, size)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (B, K, size)
    return inside.any(dim=1)  # (B, size)


def time_warp(
    feats: Tensor, lengths: Tensor, window: int, generator: torch.Generator | None = None
) -> Tensor:
    """feats: (B, T, M), lengths: (B,) -> (B, T, M) warped within each utterance's frames.

    A centre ``c`` uniform in ``[W + 1, len - W - 1)`` (W = ``window``) moves to ``m = c + d``,
    ``d`` uniform in ``[-W, W]``; output frame t reads input position ``t * c / m`` up to
    ``m`` and ``c + (t - m) * (len - 1 - c) / (len - 1 - m)`` after it, interpolated linearly.
    Frames 0 and len - 1 stay in place; padded frames are untouched, and utterances of
    ``<= 2 W + 2`` frames are returned as they are.
    """
    batch, frames, _ = feats.shape
    lens = lengths.to(feats.device)
    u = torch.rand(2, batch, device=feats.device, generator=generator)  # (2, B)
    warpable = lens > 2 * window + 2  # (B,)
    span = (lens - 2 * window - 2).clamp_min(1)
    centre = (window + 1 + (u[0] * span).floor()).float()  # (B,) in [W + 1, len - W - 1)
    shift = (u[1] * (2 * window + 1)).floor() - window  # (B,) in [-W, W]
    shift = torch.where(warpable, shift, torch.zeros_like(shift))
    src = _warp_positions(frames, lens.float(), centre, centre + shift)  # (B, T)
    warped = _interpolate(feats, src)
    keep = warpable[:, None] & length_mask(lens, frames, feats.device)  # (B, T)
    return torch.where(keep[..., None], warped, feats)


def _warp_positions(frames: int, lens: Tensor, centre: Tensor, moved: Tensor) -> Tensor:
    """(B, T) input positions (float) read by each output frame of the piecewise-linear warp."""
    t = torch.arange(frames, device=lens.device, dtype=torch.float32)[None, :]  # (1, T)
    c, m, last = centre[:, None], moved[:, None], lens[:, None] - 1  # (B, 1)
    before = t * c / m
    after = c + (t - m) * (last - c) / (last - m)
    return torch.where(t < m, before, after).clamp(min=0.0).minimum(last.clamp_min(0))


def _interpolate(feats: Tensor, src: Tensor) -> Tensor:
    """feats: (B, T, M), src: (B, T) float positions -> (B, T, M) linear interpolation."""
    low = src.floor().long().clamp(0, feats.shape[1] - 1)  # (B, T)
    high = (low + 1).clamp_max(feats.shape[1] - 1)
    frac = (src - low.float())[..., None]  # (B, T, 1)
    index = low[..., None].expand_as(feats)
    a = feats.gather(1, index)
    b = feats.gather(1, high[..., None].expand_as(feats))
    return a + (b - a) * frac


def speed_perturb(wave: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """(N,) float32 -> (~N / factor,) float32 played ``factor`` times faster (pitch shifts too).

    The samples are taken as if recorded at ``sample_rate * factor`` and resampled to
    ``sample_rate`` with soxr, as Kaldi's and SpeechBrain's speed perturbation (sox ``speed``):
    0.9 gives a longer, lower utterance, 1.1 a shorter, higher one; 1.0 returns ``wave``.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return wave
    return resample(np.asarray(wave, dtype=np.float32), sample_rate * factor, sample_rate)
