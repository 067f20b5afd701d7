"""Triton kernels of ``depthwise_conv1d`` (see ``depthwise_conv.py``): y = act(bias + sum_k
w[:, k] x[:, t - left + k]), x zero outside [0, L).

One program owns a (channels, frames) tile of one utterance and reads x where it lies (any
strides: channels-first from a Mamba block, channels-last from a Conformer's convolution module,
so no transpose or pad copy is made), the K taps as K shifted loads of the tile that the cache
serves; bias and SiLU are applied before the single store. Arithmetic is fp32, the output in x's
dtype. The backward is two kernels: the first recomputes the pre-activation, forms dLoss/dpre
(kept in fp32 when there is an activation; dLoss/dy itself otherwise) and adds the tile's sums of
dLoss/dw and dLoss/dbias atomically (fp32); the second gathers dLoss/dx from dLoss/dpre with the
taps reversed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_asr.ops.triton_launch import cdiv, launch


@triton.jit
def _tile(pid_t, pid_c, C, L, BC: tl.constexpr, BT: tl.constexpr):
    c = pid_c * BC + tl.arange(0, BC)
    t = pid_t * BT + tl.arange(0, BT)
    return c, t, c < C, t < L


@triton.jit
def _conv(x_ptr, w_ptr, b, c, t, mc, L, sb, sc, st, left, K: tl.constexpr):
    """sum_k w[c, k] x[b, c, t - left + k] over the tile, fp32."""
    acc = tl.zeros((c.shape[0], t.shape[0]), tl.float32)
    base = x_ptr + b.to(tl.int64) * sb + c[:, None].to(tl.int64) * sc
    for k in tl.static_range(K):
        s = t - left + k
        m = mc[:, None] & ((s >= 0) & (s < L))[None, :]
        xv = tl.load(base + s[None, :] * st, mask=m, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + c * K + k, mask=mc, other=0.0)[:, None] * xv
    return acc


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, C, L, sxb, sxc, sxt, syb, syc, syt, left,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    b = tl.program_id(2)
    c, t, mc, mt = _tile(tl.program_id(0), tl.program_id(1), C, L, BC, BT)
    acc = _conv(x_ptr, w_ptr, b, c, t, mc, L, sxb, sxc, sxt, left, K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mc, other=0.0)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    offs = b.to(tl.int64) * syb + c[:, None].to(tl.int64) * syc + t[None, :] * syt
    tl.store(y_ptr + offs, acc, mask=mc[:, None] & mt[None, :])


@triton.jit
def _bwd_sums_kernel(x_ptr, w_ptr, bias_ptr, dy_ptr, dpre_ptr, dw_ptr, db_ptr, C, L,
                     sxb, sxc, sxt, sdb, sdc, sdt, left, K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BC: tl.constexpr,
                     BT: tl.constexpr):  # fmt: skip
    """dLoss/dpre (stored, contiguous fp32, when SILU) and the tile's sums of dw and db."""
    b = tl.program_id(2)
    c, t, mc, mt = _tile(tl.program_id(0), tl.program_id(1), C, L, BC, BT)
    m = mc[:, None] & mt[None, :]
    offs = b.to(tl.int64) * sdb + c[:, None].to(tl.int64) * sdc + t[None, :] * sdt
    g = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv(x_ptr, w_ptr, b, c, t, mc, L, sxb, sxc, sxt, left, K)
        if HAS_BIAS:
            pre += tl.load(bias_ptr + c, mask=mc, other=0.0)[:, None]
        sg = tl.sigmoid(pre)
        g = tl.where(m, g * sg * (1.0 + pre * (1.0 - sg)), 0.0)
        dense = (b.to(tl.int64) * C + c[:, None]) * L + t[None, :]
        tl.store(dpre_ptr + dense, g, mask=m)
    if HAS_BIAS:
        tl.atomic_add(db_ptr + c, tl.sum(g, axis=1), mask=mc, sem="relaxed")
    base = x_ptr + b.to(tl.int64) * sxb + c[:, None].to(tl.int64) * sxc
    for k in tl.static_range(K):
        s = t - left + k
        ms = mc[:, None] & ((s >= 0) & (s < L))[None, :]
        xv = tl.load(base + s[None, :] * sxt, mask=ms, other=0.0).to(tl.float32)
        tl.atomic_add(dw_ptr + c * K + k, tl.sum(g * xv, axis=1), mask=mc, sem="relaxed")


@triton.jit
def _bwd_dx_kernel(w_ptr, dpre_ptr, dx_ptr, C, L, spb, spc, spt, sxb, sxc, sxt, left,
                   K: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """dx[c, s] = sum_k w[c, k] dpre[c, s + left - k]."""
    b = tl.program_id(2)
    c, s, mc, ms = _tile(tl.program_id(0), tl.program_id(1), C, L, BC, BT)
    acc = tl.zeros((BC, BT), tl.float32)
    base = dpre_ptr + b.to(tl.int64) * spb + c[:, None].to(tl.int64) * spc
    for k in tl.static_range(K):
        t = s + left - k
        m = mc[:, None] & ((t >= 0) & (t < L))[None, :]
        g = tl.load(base + t[None, :] * spt, mask=m, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + c * K + k, mask=mc, other=0.0)[:, None] * g
    offs = b.to(tl.int64) * sxb + c[:, None].to(tl.int64) * sxc + s[None, :] * sxt
    tl.store(dx_ptr + offs, acc, mask=mc[:, None] & ms[None, :])


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    """(channels, frames, warps) of a program's tile: frames along the lanes when frames are
    contiguous in memory, channels when channels are."""
    if x.stride(1) == 1 and x.stride(2) != 1:  # channels-last
        return 64, 16, 4
    return 8, 128, 4


class TritonDepthwiseConv(torch.autograd.Function):
    """(x, weight (C, K), bias or None, left, silu) -> y; see ``depthwise_conv1d``."""

    @staticmethod
    def forward(ctx, x, weight, bias, left, silu):
        batch, channels, length = x.shape
        taps = weight.shape[1]
        w32 = weight.float().contiguous()
        b32 = None if bias is None else bias.float().contiguous()
        y = torch.empty_like(x)  # x's memory layout
        bc, bt, warps = _blocks(x)
        grid = (cdiv(length, bt), cdiv(channels, bc), batch)
        if length > 0:
            launch(_fwd_kernel, grid, x, w32, b32 if b32 is not None else w32, y, channels, length,
                   *x.stride(), *y.stride(), left, K=taps, HAS_BIAS=bias is not None, SILU=silu,
                   BC=bc, BT=bt, num_warps=warps)  # fmt: skip
        ctx.save_for_backward(x, w32, b32)
        ctx.left, ctx.silu = left, silu
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w32, b32 = ctx.saved_tensors
        batch, channels, length = x.shape
        taps = w32.shape[1]
        sums = torch.zeros(channels * (taps + 1), device=x.device, dtype=torch.float32)
        dw, db = sums[: channels * taps].view(channels, taps), sums[channels * taps :]
        dx = torch.empty_like(x)
        if length > 0:
            bc, bt, warps = _blocks(x)
            grid = (cdiv(length, bt), cdiv(channels, bc), batch)
            dpre = torch.empty(x.shape, device=x.device, dtype=torch.float32) if ctx.silu else dy
            launch(_bwd_sums_kernel, grid, x, w32, b32 if b32 is not None else w32, dy, dpre, dw,
                   db, channels, length, *x.stride(), *dy.stride(), ctx.left, K=taps,
                   HAS_BIAS=b32 is not None, SILU=ctx.silu, BC=bc, BT=bt,
                   num_warps=warps)  # fmt: skip
            launch(_bwd_dx_kernel, grid, w32, dpre, dx, channels, length, *dpre.stride(),
                   *dx.stride(), ctx.left, K=taps, BC=bc, BT=bt, num_warps=warps)  # fmt: skip
        else:
            dx.zero_()
        w_dtype, b_dtype = ctx.dtypes
        return dx, dw.to(w_dtype), None if b32 is None else db.to(b_dtype), None, None
