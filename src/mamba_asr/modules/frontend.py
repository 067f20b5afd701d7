"""Convolutional front end: 2-D conv blocks over (time, frequency) with stride, then a linear.

Shape key
    B: batch, T: input frames, T': output frames, N: mel bins, C: channels, F: frequency bins,
    M: d_model.

The layout of SpeechBrain's ``ConvolutionFrontEnd`` as the Mamba-ASR recipes build it
(2 blocks of one ``Conv2d`` each, channels (64, 32), kernel 3, stride 2 on both axes, no
residuals), followed by ``TransformerASR``'s ``custom_src_module`` (Linear C*F -> M, dropout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.modules.masks import length_mask, subsampled_lengths, zero_padding

__all__ = ["ConvFrontEnd"]


class _ConvBlock(nn.Module):
    """Conv2d (k x k, stride s, padding k // 2) -> LayerNorm over (F, C) -> LeakyReLU -> dropout.

    Works on (B, C, F, T), SpeechBrain's layout inside its ``Conv2d`` (so weights line up).
    Frequency is padded by reflection (as SpeechBrain); time by zeros, after the padded frames
    of the input are zeroed, so a padded batch sees exactly what each utterance alone sees.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        out_freq: int,
        kernel_size: int,
        stride: int,
        dropout: float,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.pad = kernel_size, stride, kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, **factory)
        self.norm = nn.LayerNorm((out_freq, out_channels), **factory)
        self.activation = nn.LeakyReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, C, F, T), lengths: (B,) -> (B, C', F', T'), lengths (B,)."""
        mask = length_mask(lengths, x.shape[-1], x.device)  # (B, T)
        x = x.masked_fill(~mask[:, None, None, :], 0.0)
        p = self.pad
        x = F.pad(F.pad(x, (0, 0, p, p), mode="reflect"), (p, p))  # (B, C, F+2p, T+2p)
        y = self.conv(x).permute(0, 3, 2, 1)  # (B, T', F', C')
        y = self.dropout(self.activation(self.norm(y)))
        out_lengths = subsampled_lengths(lengths, self.kernel_size, self.stride, p)
        return y.permute(0, 3, 2, 1), out_lengths  # (B, C', F', T')


class ConvFrontEnd(nn.Module):
    """Feature front end: (B, T, N) log-Mel features -> (B, T', M), T' = T / stride**blocks.

    Each block of ``channels`` is a ``_ConvBlock`` (time and frequency subsampled by
    ``stride``); the last block's (F, C) per frame are flattened (F-major, as SpeechBrain's
    reshape) and projected by ``proj`` (Linear C*F -> M, with bias), then dropout. The recipes:
    80 mels -> 20 bins x 32 channels = 640 features, 4x fewer frames; they use dropout 0.1.
    Kernel size must be odd.
    """

    def __init__(
        self,
        n_mels: int = 80,
        d_model: int = 256,
        channels: Sequence[int] = (64, 32),
        kernel_size: int = 3,
        stride: int = 2,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of sizes >= 1, got {channels}")
        factory = {"device": device, "dtype": dtype}
        self.blocks = nn.ModuleList()
        in_channels, freq = 1, n_mels
        for out_channels in channels:
            freq = _conv_size(freq, kernel_size, stride)
            block = _ConvBlock(
                in_channels, out_channels, freq, kernel_size, stride, dropout, factory
            )
            self.blocks.append(block)
            in_channels = out_channels
        self.out_features = in_channels * freq
        self.proj = nn.Linear(self.out_features, d_model, **factory)
        self.dropout = nn.Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) input frame counts -> (B,) output frame counts."""
        for block in self.blocks:
            lengths = subsampled_lengths(lengths, block.kernel_size, block.stride, block.pad)
        return lengths

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """feats: (B, T, N); lengths: (B,) valid frames or None (all T).

        Returns x (B, T', M), zero on padded frames, and lengths (B,) of valid output frames.
        """
        if lengths is None:
            lengths = torch.full(feats.shape[:1], feats.shape[1], device=feats.device)
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, N, T)
        for block in self.blocks:
            x, lengths = block(x, lengths)  # (B, C, F, T')
        x = x.permute(0, 3, 2, 1).flatten(2)  # (B, T', F*C)
        x = self.dropout(self.proj(x))  # (B, T', M)
        return zero_padding(x, length_mask(lengths, x.shape[1], x.device)), lengths


def _conv_size(size: int, kernel_size: int, stride: int) -> int:
    """Output size of a conv with padding kernel_size // 2 on each side."""
    return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1
