"""Selective scan on CUDA with Triton: fused forward and backward kernels.

One program owns (batch b, a block of BLOCK_D channels) and walks the sequence in chunks of T steps.
Within a chunk the recurrence h_t = a_t h_{t-1} + x_t over a (BLOCK_D, N, T) tile is one
``tl.associative_scan`` along time; the state at each chunk start is kept for the backward, which
recomputes a chunk, runs the adjoint scan backwards (``reverse=True``) and accumulates dB and dC
(shared by all channels of a group) with atomic adds. Everything is fp32 inside.

Shape key: B batch, D channels, G groups of B/C (E = D / G channels each), L length, N state.
This module imports triton at import time; ``dispatch`` imports it only when triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Launch settings: channels per program, steps per chunk, warps (benchmarks/scan_cuda.py sweeps them)
CONFIG = {"block_d": 8, "chunk": 32, "fwd_warps": 4, "bwd_warps": 4}


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _tiles(u_ptr, dt_ptr, B_ptr, A_ptr, row0, bc0, t0, offs_d, offs_n, offs_t, L, N, D, shift):
    """Load one chunk (shifted by ``shift`` steps): a = exp(dt A), x = dt u B, each (BD, N, T)."""
    t = t0 + shift + offs_t  # (T,)
    mt = t < L
    md = offs_d < D
    mn = offs_n < N
    ptr_dl = (row0 + offs_d)[:, None] * L + t[None, :]  # (BD, T)
    m_dl = md[:, None] & mt[None, :]
    u = tl.load(u_ptr + ptr_dl, mask=m_dl, other=0.0)
    dt = tl.load(dt_ptr + ptr_dl, mask=m_dl, other=0.0)
    Bt = tl.load(B_ptr + bc0 + offs_n[:, None] * L + t[None, :], mask=mn[:, None] & mt[None, :],
                 other=0.0)  # fmt: skip
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=md[:, None] & mn[None, :],
                other=0.0)  # fmt: skip
    a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, N, T)
    x = (dt * u)[:, None, :] * Bt[None, :, :]  # (BD, N, T)
    return a, x, u, dt, Bt, A


@triton.jit
def _last(v, offs_t, j):
    """v[..., j] of a (BD, N, T) tile as (BD, N)."""
    return tl.sum(tl.where((offs_t == j)[None, None, :], v, 0.0), axis=2)


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, ckpt_ptr, last_ptr,
                D, L, N, E, G, n_chunks, HAS_H0: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    g = (tl.program_id(1) * BD) // E  # BD divides E (checked on the host)
    row0 = b * D
    bc0 = (b * G + g) * N * L
    state_off = (row0 + offs_d)[:, None] * N + offs_n[None, :]  # (BD, N) into (B, D, N)
    m_dn = md[:, None] & mn[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=m_dn, other=0.0)
    else:
        h = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(n_chunks):
        t0 = c * T
        ck = ((row0 + offs_d)[:, None] * n_chunks + c) * N + offs_n[None, :]
        tl.store(ckpt_ptr + ck, h, mask=m_dn)
        a, x, _u, _dt, _B, _A = _tiles(u_ptr, dt_ptr, B_ptr, A_ptr, row0, bc0, t0,
                                       offs_d, offs_n, offs_t, L, N, D, 0)  # fmt: skip
        a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
        hs = a_cum * h[:, :, None] + h_loc  # (BD, N, T)
        t = t0 + offs_t
        Ct = tl.load(C_ptr + bc0 + offs_n[:, None] * L + t[None, :], mask=mn[:, None] & (t < L)[None, :],
                     other=0.0)  # fmt: skip
        y = tl.sum(hs * Ct[None, :, :], axis=1)  # (BD, T)
        tl.store(y_ptr + (row0 + offs_d)[:, None] * L + t[None, :], y,
                 mask=md[:, None] & (t < L)[None, :])  # fmt: skip
        h = _last(hs, offs_t, tl.minimum(L - t0, T) - 1)
    tl.store(last_ptr + state_off, h, mask=m_dn)


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, ckpt_ptr, dy_ptr, dlast_ptr,
                du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr,
                D, L, N, E, G, n_chunks, HAS_DLAST: tl.constexpr, HAS_H0: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    g = (tl.program_id(1) * BD) // E
    row0 = b * D
    bc0 = (b * G + g) * N * L
    state_off = (row0 + offs_d)[:, None] * N + offs_n[None, :]
    m_dn = md[:, None] & mn[None, :]
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + state_off, mask=m_dn, other=0.0)  # dLoss/dh at chunk end
    else:
        carry = tl.zeros((BD, BN), dtype=tl.float32)
    dA = tl.zeros((BD, BN), dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t0 = c * T
        t = t0 + offs_t
        mt = t < L
        m_dl = md[:, None] & mt[None, :]
        m_nl = mn[:, None] & mt[None, :]
        ck = ((row0 + offs_d)[:, None] * n_chunks + c) * N + offs_n[None, :]
        h_start = tl.load(ckpt_ptr + ck, mask=m_dn, other=0.0)
        a, x, u, dt, Bt, A = _tiles(u_ptr, dt_ptr, B_ptr, A_ptr, row0, bc0, t0,
                                    offs_d, offs_n, offs_t, L, N, D, 0)  # fmt: skip
        a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
        hs = a_cum * h_start[:, :, None] + h_loc  # h_t, (BD, N, T)
        Ct = tl.load(C_ptr + bc0 + offs_n[:, None] * L + t[None, :], mask=m_nl, other=0.0)
        dy = tl.load(dy_ptr + (row0 + offs_d)[:, None] * L + t[None, :], mask=m_dl, other=0.0)
        # dh_t = dy_t C_t + a_{t+1} dh_{t+1}; the chunk's last step gets the carry
        a_next, _x, _u, _dt, _B, _A = _tiles(u_ptr, dt_ptr, B_ptr, A_ptr, row0, bc0, t0,
                                             offs_d, offs_n, offs_t, L, N, D, 1)  # fmt: skip
        last_j = tl.minimum(L - t0, T) - 1
        is_last = (offs_t == last_j)[None, None, :]
        val = dy[:, None, :] * Ct[None, :, :] + tl.where(is_last, carry[:, :, None], 0.0)
        coef = tl.where(is_last, 0.0, a_next)
        _c, dh = tl.associative_scan((coef, val), 2, _combine, reverse=True)
        dh = tl.where(mt[None, None, :], dh, 0.0)
        carry = _last(dh * a, offs_t, 0)
        dlog = dh * (hs - x)  # dLoss/d(dt A) = dh_t a_t h_{t-1}, and a_t h_{t-1} = h_t - x_t
        dA += tl.sum(dlog * dt[:, None, :], axis=2)
        dhB = dh * Bt[None, :, :]
        ddt = tl.sum(dlog * A[:, :, None] + dhB * u[:, None, :], axis=1)  # (BD, T)
        du = tl.sum(dhB, axis=1) * dt
        off_dl = (row0 + offs_d)[:, None] * L + t[None, :]
        tl.store(ddt_ptr + off_dl, ddt, mask=m_dl)
        tl.store(du_ptr + off_dl, du, mask=m_dl)
        dB = tl.sum(dh * (dt * u)[:, None, :], axis=0)  # (N, T), summed over this block's channels
        dC = tl.sum(hs * dy[:, None, :], axis=0)
        off_nl = bc0 + offs_n[:, None] * L + t[None, :]
        tl.atomic_add(dB_ptr + off_nl, dB, mask=m_nl)
        tl.atomic_add(dC_ptr + off_nl, dC, mask=m_nl)
    tl.store(dA_ptr + state_off, dA, mask=m_dn)
    if HAS_H0:
        tl.store(dh0_ptr + state_off, carry, mask=m_dn)


def _grouped_bc(X: Tensor) -> Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, G, N, L) fp32 contiguous."""
    return (X.unsqueeze(1) if X.dim() == 3 else X).float().contiguous()


def _block_d(dim: int, groups: int) -> int:
    e = dim // groups
    bd = CONFIG["block_d"]
    while e % bd:
        bd //= 2
    return bd


class TritonSSM(torch.autograd.Function):
    """(y, last) = SSM core in Triton; see ``ssm_scan_triton``."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0):
        batch, dim, length = u.shape
        d_state = A.shape[1]
        u, dt, A = u.float().contiguous(), dt.float().contiguous(), A.float().contiguous()
        Bg, Cg = _grouped_bc(B), _grouped_bc(C)
        groups = Bg.shape[1]
        h0c = None if h0 is None else h0.float().contiguous()
        bd, chunk = _block_d(dim, groups), CONFIG["chunk"]
        n_chunks = triton.cdiv(length, chunk)
        y = torch.empty_like(u)
        ckpt = u.new_empty(batch, dim, max(n_chunks, 1), d_state)
        last = u.new_empty(batch, dim, d_state)
        grid = (batch, triton.cdiv(dim, bd))
        _fwd_kernel[grid](
            u, dt, A, Bg, Cg, h0c if h0c is not None else u, y, ckpt, last,
            dim, length, d_state, dim // groups, groups, n_chunks, HAS_H0=h0c is not None,
            BD=bd, BN=triton.next_power_of_2(d_state), T=chunk, num_warps=CONFIG["fwd_warps"],
        )  # fmt: skip
        ctx.save_for_backward(u, dt, A, Bg, Cg, ckpt)
        ctx.b_dim, ctx.has_h0, ctx.chunk = B.dim(), h0 is not None, chunk
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, Bg, Cg, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        d_state, groups = A.shape[1], Bg.shape[1]
        dy = dy.float().contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_empty(batch, dim, d_state)
        dB, dC = torch.zeros_like(Bg), torch.zeros_like(Cg)
        dh0 = u.new_empty(batch, dim, d_state) if ctx.has_h0 else None
        bd = _block_d(dim, groups)
        grid = (batch, triton.cdiv(dim, bd))
        _bwd_kernel[grid](
            u, dt, A, Bg, Cg, ckpt, dy, dlast if dlast is not None else dy,
            du, ddt, dA, dB, dC, dh0 if dh0 is not None else dA,
            dim, length, d_state, dim // groups, groups, triton.cdiv(length, ctx.chunk),
            HAS_DLAST=dlast is not None, HAS_H0=ctx.has_h0,
            BD=bd, BN=triton.next_power_of_2(d_state), T=ctx.chunk, num_warps=CONFIG["bwd_warps"],
        )  # fmt: skip
        if ctx.b_dim == 3:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        return du, ddt, dA.sum(0), dB, dC, dh0


def ssm_scan_triton(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """SSM core in Triton (CUDA tensors): y_t = <h_t, C_t>, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t.

    u, dt: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); initial_state: (B, D, N) or None.
    Returns y (B, D, L) fp32 and the last state (B, D, N) fp32.
    """
    return TritonSSM.apply(u, dt, A, B, C, initial_state)
