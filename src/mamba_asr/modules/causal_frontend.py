"""Causal convolutional front end for streaming models: depthwise-separable 1-D convolutions.

Shape key
    B: batch, T: input frames, T': output frames, N: mel bins, C: channels, K: kernel size,
    M: d_model, S: subsampling factor (2 ** stages).

Each stage is a depthwise convolution over time (kernel K, stride 2, left padding K - 1 only,
so output frame j sees input frames 2j - K + 1 .. 2j and nothing later), a pointwise
(1 x 1) convolution mixing the channels, LayerNorm over channels, SiLU and dropout. The mel
bins are the first stage's channels; a Linear maps the last stage's channels to d_model.
A stage maps L frames to ceil(L / 2), the front end T frames to ceil(T / S).

Streaming rule: ``forward_chunk`` keeps the last K - 1 inputs of every stage. Chunks run one
after another from ``init_state`` give ``forward``'s output exactly when every chunk but the
last holds a multiple of S frames; the last chunk may hold any number >= 1. (A stride-2
stage needs an even number of inputs to keep its phase; S = 2 ** stages keeps it at every
stage.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.modules.masks import length_mask, zero_padding

__all__ = ["CausalConvFrontEnd", "CausalFrontEndState"]


class CausalFrontEndState(NamedTuple):
    """Streaming state of ``CausalConvFrontEnd``.

    caches: one (B, C_in, K-1) tensor per stage, the stage's last K-1 inputs (zeros at start).
    """

    caches: tuple[Tensor, ...]


def _ceil_half(lengths: Tensor) -> Tensor:
    """(B,) frame counts -> (B,) ceil(L / 2), the frames a causal stride-2 stage outputs."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


class _CausalStage(nn.Module):
    """Depthwise Conv1d (K, stride 2, causal) -> pointwise Conv1d -> LayerNorm -> SiLU -> dropout.

    Works on (B, C_in, L) -> (B, C_out, ceil(L / 2)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dropout: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.kernel_size = in_channels, kernel_size
        self.depthwise = nn.Conv1d(
            in_channels, in_channels, kernel_size, stride=2, groups=in_channels, **factory
        )
        self.pointwise = nn.Conv1d(in_channels, out_channels, 1, **factory)
        self.norm = nn.LayerNorm(out_channels, **factory)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def _convolve(self, xc: Tensor) -> Tensor:
        """xc: (B, C_in, K-1+L) left context + inputs -> (B, C_out, ceil(L / 2))."""
        y = self.pointwise(self.depthwise(xc)).transpose(1, 2)  # (B, L', C_out)
        y = self.dropout(self.activation(self.norm(y)))
        return y.transpose(1, 2)  # (B, C_out, L')

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, L), zero left context -> (B, C_out, ceil(L / 2))."""
        return self._convolve(F.pad(x, (self.kernel_size - 1, 0)))

    def forward_chunk(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, C_in, L) new inputs; cache: (B, C_in, K-1). Returns the outputs and the cache."""
        xc = torch.cat([cache.to(x.dtype), x], dim=-1)  # (B, C_in, K-1+L)
        return self._convolve(xc), xc[..., xc.shape[-1] - (self.kernel_size - 1) :]


class CausalConvFrontEnd(nn.Module):
    """Causal feature front end: (B, T, N) log-Mel features -> (B, ceil(T / S), M).

    ``channels``: output channels of each stage; their number sets the subsampling
    S = 2 ** len(channels) (2 stages: 4x, 3 stages: 8x). ``kernel_size`` (K >= 2): the
    depthwise kernel over time. See the module docstring for the layout and the streaming rule.
    Padded input frames never reach valid outputs (the convolutions only look back), and
    padded output frames are zero.
    """

    def __init__(
        self,
        n_mels: int = 80,
        d_model: int = 256,
        channels: Sequence[int] = (256, 256),
        kernel_size: int = 5,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of sizes >= 1, got {channels}")
        factory = {"device": device, "dtype": dtype}
        self.kernel_size, self.subsampling = kernel_size, 2 ** len(channels)
        self.stages = nn.ModuleList()
        in_channels = n_mels
        for out_channels in channels:
            self.stages.append(
                _CausalStage(in_channels, out_channels, kernel_size, dropout, **factory)
            )
            in_channels = out_channels
        self.proj = nn.Linear(in_channels, d_model, **factory)
        self.dropout = nn.Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) input frame counts -> (B,) output frame counts, ceil(L / S)."""
        for _ in self.stages:
            lengths = _ceil_half(lengths)
        return lengths

    def _project(self, x: Tensor) -> Tensor:
        """(B, C, T') -> (B, T', M)."""
        return self.dropout(self.proj(x.transpose(1, 2)))

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """feats: (B, T, N); lengths: (B,) valid frames or None (all T).

        Returns x (B, ceil(T / S), M), zero on padded frames, and lengths (B,) of valid frames.
        """
        if lengths is None:
            lengths = torch.full(feats.shape[:1], feats.shape[1], device=feats.device)
        mask = length_mask(lengths, feats.shape[1], feats.device)  # (B, T)
        x = zero_padding(feats, mask).transpose(1, 2)  # (B, N, T)
        for stage in self.stages:
            x = stage(x)  # (B, C, ceil(L / 2))
        out_lengths = self.output_lengths(lengths.to(feats.device))
        x = self._project(x)  # (B, T', M)
        return zero_padding(x, length_mask(out_lengths, x.shape[1], x.device)), out_lengths

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CausalFrontEndState:
        """Zero left context for ``batch`` streams; device and dtype default to proj's weight's."""
        weight = self.proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return CausalFrontEndState(
            caches=tuple(
                torch.zeros(batch, s.in_channels, s.kernel_size - 1, device=device, dtype=dtype)
                for s in self.stages
            )
        )

    def forward_chunk(
        self, feats: Tensor, state: CausalFrontEndState
    ) -> tuple[Tensor, CausalFrontEndState]:
        """feats: (B, t, N), t >= 1 new frames (a multiple of S except in the last chunk).

        Returns x (B, ceil(t / S), M) and the state after these frames.
        """
        x = feats.transpose(1, 2)  # (B, N, t)
        caches = []
        for stage, cache in zip(self.stages, state.caches, strict=True):
            x, cache = stage.forward_chunk(x, cache)  # (B, C, ceil(L / 2))
            caches.append(cache)
        return self._project(x), CausalFrontEndState(caches=tuple(caches))
