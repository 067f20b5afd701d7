"""Padding masks and per-utterance time indices, built with tensor ops only (no host syncs).

Inside ``shared_masks()`` (the encoders open it around their layer stack) each mask is built once
per ``lengths`` tensor and length and handed to every layer that asks, instead of being rebuilt
in each layer: the same tensors, so the same values, in fewer operator calls a step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

_SHARED = threading.local()  # .cache: dict while a shared_masks() block is open, else absent


def _tracing() -> bool:
    """Graphs being traced or compiled record every op; there nothing is shared."""
    return (
        torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


@contextlib.contextmanager
def shared_masks() -> Iterator[None]:
    """Within the block, ``length_mask``, ``reverse_index``, ``key_padding_mask`` and the
    inverted mask of ``zero_padding`` build each result once per (tensor, length, device) and
    return that same tensor to later callers. Nested blocks share the outer one's; under tracing,
    export or compilation the block does nothing. Leaving the block drops everything built."""
    if getattr(_SHARED, "cache", None) is not None or _tracing():
        yield
        return
    _SHARED.cache = {}
    try:
        yield
    finally:
        _SHARED.cache = None


def _shared(kind: str, source: Tensor, extra: tuple, build: Callable[[], Tensor]) -> Tensor:
    """build(), or what it gave for the same source tensor (same object, no in-place change since:
    its version counter) and extra inside the open ``shared_masks()`` block. The entry keeps the
    source alive, so its id cannot be reused by another tensor while the block is open."""
    cache = getattr(_SHARED, "cache", None)
    if cache is None:
        return build()
    key = (kind, id(source), extra)
    hit = cache.get(key)
    if hit is not None and hit[0] is source and hit[1] == source._version:
        return hit[2]
    value = build()
    cache[key] = (source, source._version, value)
    return value


def _length_mask(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    frames = torch.arange(length, device=device)  # (L,)
    return frames[None, :] < lengths.to(device)[:, None]  # (B, L)


def length_mask(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    """(B,) valid frame counts -> (B, L) bool, True on valid frames (tensor ops, no host sync)."""
    device = torch.device(device)
    return _shared("mask", lengths, (length, device), lambda: _length_mask(lengths, length, device))


def _reverse_index(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    frames = torch.arange(length, device=device)[None, :]  # (1, L)
    lens = lengths.to(device)[:, None]  # (B, 1)
    return torch.where(frames < lens, lens - 1 - frames, frames)  # (B, L)


def reverse_index(lengths: Tensor, length: int, device: torch.device) -> Tensor:
    """(B,) valid frame counts -> (B, L) time index reversing each utterance within its length.

    Frame t < len maps to len - 1 - t; padded frames map to themselves, so the index is its own
    inverse and padding stays at the end.
    """
    device = torch.device(device)
    return _shared(
        "reverse", lengths, (length, device), lambda: _reverse_index(lengths, length, device)
    )


def padded_frames(mask: Tensor) -> Tensor:
    """(B, L) bool True on valid frames -> ~mask, True on padded frames (built once per mask
    inside ``shared_masks()``)."""
    return _shared("not", mask, (), lambda: ~mask)


def key_padding_mask(lengths: Tensor, length: int) -> Tensor:
    """(B,) valid frame counts -> (B, L) bool, True on padded frames (attention's convention)."""
    return padded_frames(length_mask(lengths, length, lengths.device))


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
    padded = padded_frames(mask)  # (B, L)
    return x.masked_fill(padded.reshape(mask.shape + (1,) * (x.dim() - 2)), 0.0)
