"""The reshuffles around a bidirectional block's scan: into one (B, 2D, L) batch of both directions
and back, with each utterance reversed within its own length.

Shape key: B batch, L frames, D channels of one direction.

ConMamba's BiMamba runs both directions as one scan over 2D channels: the forward direction's x and
z in the first D, the same utterances reversed in the last D. ``split_directions`` builds those
inputs from in_proj's (B, L, 2D) output and ``merge_directions`` averages the two outputs back
into (B, L, D), the backward direction's re-reversed, ready for out_proj.

Three implementations with the same signature: the composites of PyTorch ops
(``split_directions_ref``, ``merge_directions_ref``: transposes, masked_fill, gather, cat, the
average), which the others are tested against; autograd Functions of PyTorch ops that write each
result once into its final layout; and Triton kernels, one a pass (``directions_triton.py``), which
``split_directions`` and ``merge_directions`` take where triton runs (backend "auto", the default,
or ``MAMBA_ASR_DIRECTIONS``: "auto", "torch", "triton"). The reversal is a permutation that is its
own inverse (padded frames map to themselves, ``masks.reverse_index``), so the backward reverses
with the same gather rather than scattering into zeros, and the concatenations and transposes happen
inside the gathers' and copies' writes. The two write a third fewer bytes than the composites, and a
training step of the large ConMamba 14% fewer in all (benchmarks/bidirectional.py,
scripts/encoder_writes.py). Exports (``torch.compiler.is_exporting()``) and ``torch.jit`` tracing
take the composites.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from mamba_asr.ops.selective_scan.dispatch import triton_runs_on

__all__ = [
    "BACKEND_ENV",
    "merge_directions",
    "merge_directions_ref",
    "resolve_backend",
    "reverse_time",
    "split_directions",
    "split_directions_ref",
]

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "MAMBA_ASR_DIRECTIONS"


def _index(index: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """(B, L) time index reversing each utterance: ``index``, or the whole length's when None."""
    if index is not None:
        return index
    return torch.arange(length - 1, -1, -1, device=device).expand(batch, length)


def reverse_time(x: Tensor, index: Tensor | None) -> Tensor:
    """(B, C, L) reversed along L: whole sequences if index is None, else per utterance with
    index (B, L) (``masks.reverse_index``)."""
    if index is None:
        return x.flip(-1)
    return x.gather(-1, index[:, None, :].expand_as(x))


def _check_split(
    xz: Tensor, mask: Tensor | None, index: Tensor | None, frames: int | None = None
) -> None:
    if xz.dim() != 3 or xz.shape[2] % 2:
        raise ValueError(f"xz must be (batch, length, 2 * channels), got {tuple(xz.shape)}")
    for name, t in (("mask", mask), ("index", index)):
        if t is not None and tuple(t.shape) != tuple(xz.shape[:2]):
            raise ValueError(
                f"{name} must be (batch, length)={tuple(xz.shape[:2])}, got {tuple(t.shape)}"
            )
    if frames is not None and frames < xz.shape[1]:
        raise ValueError(f"frames must be at least the length {xz.shape[1]}, got {frames}")


def _check_merge(y2: Tensor, index: Tensor | None = None, length: int | None = None) -> None:
    if y2.dim() != 3 or y2.shape[1] % 2:
        raise ValueError(f"y2 must be (batch, 2 * channels, length), got {tuple(y2.shape)}")
    if length is not None and not 0 <= length <= y2.shape[2]:
        raise ValueError(f"length must be in [0, {y2.shape[2]}], got {length}")
    want = (y2.shape[0], y2.shape[2] if length is None else length)
    if index is not None and tuple(index.shape) != want:
        raise ValueError(f"index must be (batch, length)={want}, got {tuple(index.shape)}")


def split_directions_ref(
    xz: Tensor, mask: Tensor | None = None, index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """xz (B, L, 2D): in_proj's [x | z] per frame, any memory layout; mask (B, L) True on valid
    frames or None; index (B, L) the per-utterance reversal (``masks.reverse_index``) or None
    (whole sequences).
    Returns x2, z2 (B, 2D, L) contiguous: [x, x reversed] and [z, z reversed], x zero on padded
    frames."""
    _check_split(xz, mask, index)
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (B, D, L) each
    if mask is not None:
        x = x.masked_fill(~mask[:, None, :], 0.0)
    x2 = torch.cat([x, reverse_time(x, index)], dim=1)
    return x2, torch.cat([z, reverse_time(z, index)], dim=1)


def merge_directions_ref(y2: Tensor, index: Tensor | None = None) -> Tensor:
    """y2 (B, 2D, L): the scan's outputs, forward direction first, the other reversed; index as
    ``split_directions_ref``. Returns (B, L, D) contiguous, the average of the forward output and
    the other re-reversed."""
    _check_merge(y2)
    y_fwd, y_bwd = y2.chunk(2, dim=1)
    return ((y_fwd + reverse_time(y_bwd, index)) / 2).transpose(1, 2).contiguous()


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz: Tensor, mask: Tensor | None, index: Tensor) -> tuple[Tensor, Tensor]:
        batch, length, two_d = xz.shape
        d = two_d // 2
        # (x | z, B, direction, D, L): out[0] and out[1] are x2 and z2, each contiguous
        out = xz.new_empty(2, batch, 2, d, length)
        fwd = out[:, :, 0].permute(1, 0, 2, 3)  # (B, x | z, D, L)
        src = xz.reshape(batch, length, 2, d).permute(0, 2, 3, 1)  # (B, x | z, D, L), strided
        if mask is None:
            fwd.copy_(src)
        else:  # x zeroed on padded frames as it is copied
            torch.where(mask[:, None, :], src[:, 0], xz.new_zeros(()), out=out[0, :, 0])
            out[1, :, 0].copy_(src[:, 1])
        idx = index[:, None, None, :].expand(batch, 2, d, length)
        torch.gather(fwd, -1, idx, out=out[:, :, 1].permute(1, 0, 2, 3))
        ctx.save_for_backward(mask, index)
        ctx.xz_strides = xz.stride()
        return out[0].view(batch, two_d, length), out[1].view(batch, two_d, length)

    @staticmethod
    def backward(ctx, dx2: Tensor | None, dz2: Tensor | None):
        mask, index = ctx.saved_tensors
        g = dx2 if dx2 is not None else dz2
        batch, two_d, length = g.shape
        d = two_d // 2
        # in xz's own memory layout, so the gradient reaches in_proj without a copy
        dxz = torch.empty_strided((batch, length, two_d), ctx.xz_strides, dtype=g.dtype,
                                  device=g.device)  # fmt: skip
        parts = dxz.view(batch, length, 2, d).permute(0, 2, 3, 1)  # (B, x | z, D, L)
        idx = index[:, None, :].expand(batch, d, length)
        for part, grad in enumerate((dx2, dz2)):
            if grad is None:
                parts[:, part].zero_()
                continue
            grad = grad.reshape(batch, 2, d, length)
            # d(own direction) + the reversed direction's gradient reversed back
            torch.add(grad[:, 0], grad[:, 1].gather(-1, idx), out=parts[:, part])
        if mask is not None:
            parts[:, 0].masked_fill_(~mask[:, None, :], 0.0)
        return dxz, None, None


class _Merge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y2: Tensor, index: Tensor) -> Tensor:
        batch, two_d, length = y2.shape
        d = two_d // 2
        idx = index[:, None, :].expand(batch, d, length)
        out = y2.new_empty(batch, length, d)
        # (a + b) / 2 as a + (b - a) / 2: one pass, written in place transposed
        torch.lerp(y2[:, :d], y2[:, d:].gather(-1, idx), 0.5, out=out.transpose(1, 2))
        ctx.save_for_backward(index)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        (index,) = ctx.saved_tensors
        batch, length, d = dout.shape
        dy2 = dout.new_empty(batch, 2 * d, length)
        torch.mul(dout.transpose(1, 2), 0.5, out=dy2[:, :d])
        torch.gather(dy2[:, :d], -1, index[:, None, :].expand(batch, d, length), out=dy2[:, d:])
        return dy2, None


def _composite() -> bool:
    """Whether to take the composites: while a graph is traced for export."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """ "torch" or "triton": what the reshuffles run for ``backend`` ("auto": Triton where it runs;
    None: ``MAMBA_ASR_DIRECTIONS``, else "auto") on tensors on ``device``."""
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"directions backend must be one of {BACKENDS}, got {backend!r}")
    triton_ok = triton_runs_on(device)
    if backend == "triton" and not triton_ok:
        raise ValueError(f"the triton directions kernels need triton and CUDA, not {device.type}")
    return "triton" if backend != "torch" and triton_ok else "torch"


def _padded(x: Tensor, frames: int) -> Tensor:
    """x (B, C, L) with zero frames after its L up to ``frames``."""
    return x if frames == x.shape[2] else torch.nn.functional.pad(x, (0, frames - x.shape[2]))


def split_directions(
    xz: Tensor, mask: Tensor | None = None, index: Tensor | None = None, *,
    backend: str | None = None, frames: int | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``split_directions_ref``, each result written once (see the module's doc); backend as
    ``resolve_backend``. frames: the results' length, L (None) or more, the frames past L zero
    (x2 and z2 rows of a length the GPU's vector loads can take whole, see
    ``modules.mamba.BiMamba``)."""
    _check_split(xz, mask, index, frames)
    batch, length, _ = xz.shape
    frames = length if frames is None else frames
    if _composite():
        x2, z2 = split_directions_ref(xz, mask, index)
        return _padded(x2, frames), _padded(z2, frames)
    index = _index(index, batch, length, xz.device)
    if resolve_backend(backend, xz.device) == "triton":
        from mamba_asr.ops.directions_triton import TritonSplit

        return TritonSplit.apply(xz, mask, index, frames)
    x2, z2 = _Split.apply(xz, mask, index)
    return _padded(x2, frames), _padded(z2, frames)


def merge_directions(
    y2: Tensor, index: Tensor | None = None, *, backend: str | None = None,
    length: int | None = None,
) -> Tensor:  # fmt: skip
    """``merge_directions_ref``, the result written once (see the module's doc); backend as
    ``resolve_backend``. length: the frames to merge, the first of y2's (None: all)."""
    _check_merge(y2, index, length)
    length = y2.shape[2] if length is None else length
    if _composite():
        return merge_directions_ref(y2[..., :length], index)
    index = _index(index, y2.shape[0], length, y2.device)
    if resolve_backend(backend, y2.device) == "triton":
        from mamba_asr.ops.directions_triton import TritonMerge

        return TritonMerge.apply(y2, index)
    return _Merge.apply(y2[..., :length], index)
