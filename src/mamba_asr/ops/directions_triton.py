"""Triton kernels of ``split_directions`` and ``merge_directions`` (see ``directions.py``): each
pass one kernel that reads its inputs where they lie and writes each result once.

One program owns a (channels, frames) tile of one utterance. The split reads x and z at the
tile's frames and at their reversed frames (``masks.reverse_index``, its own inverse), zeroes x on
padded frames and writes both directions of x2 and z2; its backward adds the two directions'
gradients back into xz's own memory layout (the transpose and the concatenation happen in the
writes). The merge reads the forward output and the backward one at the reversed frames and writes
their average transposed, (B, L, D); its backward writes half of dLoss/dout into both directions.
Where PyTorch's ops take three to five kernels a pass with strided, transposing writes, these
take one. Values are summed in fp32 and rounded once to the tensors' dtype, which is what the
composites' PyTorch ops give, to the bit (the average's halving is exact).

x2, z2 and y2 may be longer than xz (``frames`` F >= L, ``split_directions(frames=)``): the split
writes zeros on frames L..F-1, the merge reads the first L, and the gradients follow; BiMamba
asks for it so that the kernels after the split get rows of a length divisible by 16.

Shape key: B batch, L frames, F frames of x2/z2/y2, D channels of one direction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_asr.ops.triton_launch import cdiv, launch

BC, BT, WARPS = 32, 64, 4  # tile: channels, frames; warps a program


@triton.jit
def _tile(D, L, BC: tl.constexpr, BT: tl.constexpr):
    """(batch, channels, frames) of this program's tile as int64 (offsets of large tensors pass
    2^31), the tile's mask and the frames' own."""
    b = tl.program_id(2).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    mc, mt = c < D, t < L
    return b, c.to(tl.int64), t.to(tl.int64), mc[:, None] & mt[None, :], mt


@triton.jit
def _kept(mask_ptr, b, t, sm_b, sm_l, mt):
    """(1, frames) True on the utterances' valid frames (mask (B, L) as bytes), False past mt."""
    return (tl.load(mask_ptr + b * sm_b + t * sm_l, mask=mt, other=0) != 0)[None, :]


@triton.jit
def _split_fwd_kernel(xz_ptr, mask_ptr, idx_ptr, x2_ptr, z2_ptr, D, L, LP, s_b, s_l, s_c,
                      sm_b, sm_l, si_b, si_l, HAS_MASK: tl.constexpr,
                      BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    # the LP frames of x2 and z2: xz's L, then zeros
    b, c, t, m, mt = _tile(D, LP, BC, BT)
    valid = t < L
    mv = m & valid[None, :]
    r = tl.load(idx_ptr + b * si_b + t * si_l, mask=valid, other=0).to(tl.int64)
    at_t = xz_ptr + b * s_b + t[None, :] * s_l
    at_r = xz_ptr + b * s_b + r[None, :] * s_l
    x_col, z_col = c[:, None] * s_c, (c[:, None] + D) * s_c
    x_f = tl.load(at_t + x_col, mask=mv, other=0.0)
    x_r = tl.load(at_r + x_col, mask=mv, other=0.0)
    if HAS_MASK:  # x zero on padded frames (the reversal maps them to themselves)
        keep = _kept(mask_ptr, b, t, sm_b, sm_l, valid)
        x_f = tl.where(keep, x_f, 0.0)
        x_r = tl.where(keep, x_r, 0.0)
    row = b * 2 * D * LP + t[None, :]
    own, other = row + c[:, None] * LP, row + (c[:, None] + D) * LP
    tl.store(x2_ptr + own, x_f, mask=m)
    tl.store(x2_ptr + other, x_r, mask=m)
    tl.store(z2_ptr + own, tl.load(at_t + z_col, mask=mv, other=0.0), mask=m)
    tl.store(z2_ptr + other, tl.load(at_r + z_col, mask=mv, other=0.0), mask=m)


@triton.jit
def _both(g_ptr, b, c, t, r, m, D, LP):
    """dLoss/d(one of x, z) at frames t, fp32: its own direction's gradient plus the reversed
    direction's at the reversed frames (rows of LP frames)."""
    base = g_ptr + b * 2 * D * LP
    own = tl.load(base + c[:, None] * LP + t[None, :], mask=m, other=0.0).to(tl.float32)
    rev = tl.load(base + (c[:, None] + D) * LP + r[None, :], mask=m, other=0.0)
    return own + rev.to(tl.float32)


@triton.jit
def _split_bwd_kernel(dx2_ptr, dz2_ptr, mask_ptr, idx_ptr, dxz_ptr, D, L, LP, s_b, s_l, s_c,
                      sm_b, sm_l, si_b, si_l, HAS_DX: tl.constexpr, HAS_DZ: tl.constexpr,
                      HAS_MASK: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    b, c, t, m, mt = _tile(D, L, BC, BT)
    r = tl.load(idx_ptr + b * si_b + t * si_l, mask=mt, other=0).to(tl.int64)
    dst = dxz_ptr + b * s_b + t[None, :] * s_l
    if HAS_DX:
        gx = _both(dx2_ptr, b, c, t, r, m, D, LP)
        if HAS_MASK:
            gx = tl.where(_kept(mask_ptr, b, t, sm_b, sm_l, mt), gx, 0.0)
    else:
        gx = tl.zeros((BC, BT), tl.float32)
    gz = _both(dz2_ptr, b, c, t, r, m, D, LP) if HAS_DZ else tl.zeros((BC, BT), tl.float32)
    tl.store(dst + c[:, None] * s_c, gx, mask=m)
    tl.store(dst + (c[:, None] + D) * s_c, gz, mask=m)


@triton.jit
def _merge_fwd_kernel(y2_ptr, idx_ptr, out_ptr, D, L, LP, si_b, si_l,
                      BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    b, c, t, m, mt = _tile(D, L, BC, BT)
    r = tl.load(idx_ptr + b * si_b + t * si_l, mask=mt, other=0).to(tl.int64)
    avg = _both(y2_ptr, b, c, t, r, m, D, LP) * 0.5
    tl.store(out_ptr + b * L * D + t[None, :] * D + c[:, None], avg, mask=m)


@triton.jit
def _merge_bwd_kernel(dout_ptr, idx_ptr, dy2_ptr, D, L, LP, s_b, s_l, s_c, si_b, si_l,
                      BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    # the LP frames of dy2: half of dLoss/dout on the L frames, then zeros
    b, c, t, m, mt = _tile(D, LP, BC, BT)
    valid = t < L
    mv = m & valid[None, :]
    r = tl.load(idx_ptr + b * si_b + t * si_l, mask=valid, other=0).to(tl.int64)
    col = dout_ptr + b * s_b + c[:, None] * s_c
    g = tl.load(col + t[None, :] * s_l, mask=mv, other=0.0).to(tl.float32)
    g_r = tl.load(col + r[None, :] * s_l, mask=mv, other=0.0).to(tl.float32)
    row = dy2_ptr + b * 2 * D * LP + t[None, :]
    tl.store(row + c[:, None] * LP, g * 0.5, mask=m)
    tl.store(row + (c[:, None] + D) * LP, g_r * 0.5, mask=m)


def _grid(batch: int, d: int, length: int) -> tuple[int, int, int]:
    return (cdiv(length, BT), cdiv(d, BC), batch)


def _launch(kernel, grid: tuple[int, int, int], *args, **meta) -> None:
    """``launch`` with this file's tile, skipped when the grid is empty (no frames, no batch)."""
    if min(grid) > 0:
        launch(kernel, grid, *args, BC=BC, BT=BT, num_warps=WARPS, **meta)


def _mask_args(mask: Tensor | None, dummy: Tensor) -> tuple[Tensor, int, int]:
    if mask is None:
        return dummy, 0, 0
    return mask.view(torch.uint8), mask.stride(0), mask.stride(1)


class TritonSplit(torch.autograd.Function):
    """(x2, z2) of ``split_directions``: xz (B, L, 2D) any layout, mask (B, L) bool or None,
    index (B, L) integer (any strides); x2, z2 (B, 2D, frames), zero past L."""

    @staticmethod
    def forward(ctx, xz: Tensor, mask: Tensor | None, index: Tensor,
                frames: int) -> tuple[Tensor, Tensor]:  # fmt: skip
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        batch, length, two_d = xz.shape
        d = two_d // 2
        out = xz.new_empty(2, batch, two_d, frames)
        m, sm_b, sm_l = _mask_args(mask, index)
        _launch(
            _split_fwd_kernel, _grid(batch, d, frames), xz, m, index, out[0], out[1], d, length,
            frames, *xz.stride(), sm_b, sm_l, *index.stride(), HAS_MASK=mask is not None,
        )  # fmt: skip
        ctx.save_for_backward(mask, index)
        ctx.xz_strides = xz.stride()
        return out[0], out[1]

    @staticmethod
    def backward(ctx, dx2: Tensor | None, dz2: Tensor | None):
        mask, index = ctx.saved_tensors
        if dx2 is None and dz2 is None:
            return None, None, None, None
        g = dx2 if dx2 is not None else dz2
        batch, two_d, frames = g.shape
        length, d = index.shape[1], two_d // 2
        # in xz's own memory layout, so the gradient reaches in_proj without a copy
        dxz = torch.empty_strided((batch, length, two_d), ctx.xz_strides, dtype=g.dtype,
                                  device=g.device)  # fmt: skip
        dx2 = None if dx2 is None else dx2.contiguous()
        dz2 = None if dz2 is None else dz2.contiguous()
        m, sm_b, sm_l = _mask_args(mask, index)
        _launch(
            _split_bwd_kernel, _grid(batch, d, length), g if dx2 is None else dx2,
            g if dz2 is None else dz2, m, index, dxz, d, length, frames, *dxz.stride(), sm_b, sm_l,
            *index.stride(), HAS_DX=dx2 is not None, HAS_DZ=dz2 is not None,
            HAS_MASK=mask is not None,
        )  # fmt: skip
        return dxz, None, None, None


class TritonMerge(torch.autograd.Function):
    """(B, L, D) of ``merge_directions``: y2 (B, 2D, frames >= L), of which the first L frames
    are read; index (B, L) integer (any strides)."""

    @staticmethod
    def forward(ctx, y2: Tensor, index: Tensor) -> Tensor:
        batch, two_d, frames = y2.shape
        length, d = index.shape[1], two_d // 2
        y2 = y2.contiguous()
        out = y2.new_empty(batch, length, d)
        _launch(
            _merge_fwd_kernel, _grid(batch, d, length), y2, index, out, d, length, frames,
            *index.stride(),
        )  # fmt: skip
        ctx.save_for_backward(index)
        ctx.frames = frames
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        (index,) = ctx.saved_tensors
        batch, length, d = dout.shape
        dy2 = dout.new_empty(batch, 2 * d, ctx.frames)
        _launch(
            _merge_bwd_kernel, _grid(batch, d, ctx.frames), dout, index, dy2, d, length,
            ctx.frames, *dout.stride(), *index.stride(),
        )  # fmt: skip
        return dy2, None
