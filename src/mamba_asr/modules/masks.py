"""Padding masks and per-utterance time indices, built with tensor ops only (no host syncs)."""

from __future__ import annotations

import torch
from torch import Tensor


def length_mask(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    """(B,) valid frame counts -> (B, L) bool, True on valid frames (tensor ops, no host sync)."""
    frames = torch.arange(length, device=device)  # (L,)
    return frames[None, :] < lengths.to(device)[:, None]  # (B, L)


def reverse_index(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    """(B,) valid frame counts -> (B, L) time index reversing each utterance within its length.

    Frame t < len maps to len - 1 - t; padded frames map to themselves, so the index is its own
    inverse and padding stays at the end.
    """
    frames = torch.arange(length, device=device)[None, :]  # (1, L)
    lens = lengths.to(device)[:, None]  # (B, 1)
    return torch.where(frames < lens, lens - 1 - frames, frames)  # (B, L)


def key_padding_mask(lengths: Tensor, length: int) -> Tensor:
    """(B,) valid frame counts -> (B, L) bool, True on padded frames (attention's convention)."""
    return ~length_mask(lengths, length, lengths.device)


def causal_mask(length: int, device: torch.device) -> Tensor:
    """(L, L) bool, True where a query may NOT attend (keys in its future)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


def subsampled_lengths(lengths: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """Output lengths of a convolution over time: floor((L + 2p - k) / s) + 1, at least 0."""
    return (
        torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor").add(1).clamp_min(0)
    )


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """x: (B, L, ...) with mask (B, L) True on valid frames -> x with padded frames set to zero.

    Returns x itself when mask is None.
    """
    if mask is None:
        return x
    keep = mask.reshape(mask.shape + (1,) * (x.dim() - 2))  # (B, L, 1, ...)
    return x.masked_fill(~keep, 0.0)
