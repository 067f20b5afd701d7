"""Sinusoidal position encodings: absolute (Transformer) and relative (Transformer-XL)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid(positions: Tensor, d_model: int) -> Tensor:
    """(P,) float positions -> (P, d_model): sin on even channels, cos on odd ones."""
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    freq = torch.exp(half * (-math.log(10000.0) / d_model))  # (d_model / 2,)
    angles = positions.float()[:, None] * freq[None, :]  # (P, d_model / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (P, d_model)


class SinusoidalPositionalEncoding(nn.Module):
    """Absolute encoding: x (B, L, d_model) -> (L, d_model) table to add, in x's dtype."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal encodings, got {d_model}")
        self.d_model = d_model

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        return sinusoid(positions, self.d_model).to(x.dtype)


class RelativePositionalEncoding(nn.Module):
    """Transformer-XL relative encoding: x (B, L, d_model) -> (2L-1, d_model) for distances
    L-1, ..., 0, ..., -(L-1) (query position minus key position), in x's dtype."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal encodings, got {d_model}")
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        distances = torch.arange(length - 1, -length, -1, device=x.device)  # (2L-1,)
        return sinusoid(distances, self.d_model).to(x.dtype)
