"""Selective scan on CUDA with Triton: one fused kernel forward, one backward.

One program owns (batch b, a block of BD channels) and walks the sequence in chunks of T steps.
Within a chunk the recurrence h_t = a_t h_{t-1} + x_t over a (BD, N, T) tile is one
``tl.associative_scan`` along time. The elementwise parts are fused in: dt = softplus(delta +
delta_bias), the D skip and the z gate, so each input is read once in its own dtype (fp32, fp16 or
bf16) and the output written once. The forward keeps the state at each chunk start; the backward
recomputes a chunk from it, runs the adjoint scan backwards (``reverse=True``) and accumulates dB
and dC (shared by the channels of a group) with atomic adds. Arithmetic is fp32 throughout.

Shape key: B batch, D channels, G groups of B/C (E = D / G channels each), L length, N state.
This module imports triton; ``dispatch`` imports it only when triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Launch settings: channels per program, steps per chunk, warps (benchmarks/scan_cuda.py sweeps them)
CONFIG = {"block_d": 4, "chunk": 32, "fwd_warps": 1, "bwd_warps": 2}


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _chunk(u_ptr, delta_ptr, bias_ptr, B_ptr, offs_dl, m_dl, bc_off, m_nl, offs_d, md, A,
           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):  # fmt: skip
    """One chunk's inputs and terms: u, delta + bias, dt, B (N, T); a = exp(dt A), x = dt u B."""
    u = tl.load(u_ptr + offs_dl, mask=m_dl, other=0.0).to(tl.float32)  # (BD, T)
    pre = tl.load(delta_ptr + offs_dl, mask=m_dl, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += tl.load(bias_ptr + offs_d, mask=md, other=0.0)[:, None]
    dt = _softplus(pre) if SOFTPLUS else pre
    dt = tl.where(m_dl, dt, 0.0)  # steps past L: a = 1, x = 0
    Bt = tl.load(B_ptr + bc_off, mask=m_nl, other=0.0).to(tl.float32)  # (N, T)
    a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, N, T)
    x = (dt * u)[:, None, :] * Bt[None, :, :]
    return u, pre, dt, Bt, a, x


@triton.jit
def _at(v, offs_t, j):
    """v[..., j] of a (BD, N, T) tile, as (BD, N)."""
    return tl.sum(tl.where((offs_t == j)[None, None, :], v, 0.0), axis=2)


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                out_ptr, ckpt_ptr, last_ptr, D, L, N, E, G, n_chunks,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):  # fmt: skip
    b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n, offs_t = tl.arange(0, BN), tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    rows = b * D + offs_d  # (BD,) rows of (B, D, .)
    bc0 = (b * G + (pid_d * BD) // E) * N * L  # this block's group of B/C (BD divides E)
    m_dn = md[:, None] & mn[None, :]
    state_off = rows[:, None] * N + offs_n[None, :]  # (BD, N)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m_dn, other=0.0)
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0) if HAS_D else tl.zeros((BD,), tl.float32)
    h = (
        tl.load(h0_ptr + state_off, mask=m_dn, other=0.0)
        if HAS_H0
        else tl.zeros((BD, BN), tl.float32)
    )
    for c in range(n_chunks):
        t = c * T + offs_t
        m_dl, m_nl = md[:, None] & (t < L)[None, :], mn[:, None] & (t < L)[None, :]
        offs_dl = rows[:, None] * L + t[None, :]
        bc_off = bc0 + offs_n[:, None] * L + t[None, :]
        tl.store(ckpt_ptr + (rows[:, None] * n_chunks + c) * N + offs_n[None, :], h, mask=m_dn)
        u, _pre, _dt, _B, a, x = _chunk(u_ptr, delta_ptr, bias_ptr, B_ptr, offs_dl, m_dl,
                                        bc_off, m_nl, offs_d, md, A, HAS_BIAS, SOFTPLUS)  # fmt: skip
        a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
        hs = a_cum * h[:, :, None] + h_loc  # h_t, (BD, N, T)
        Ct = tl.load(C_ptr + bc_off, mask=m_nl, other=0.0).to(tl.float32)
        y = tl.sum(hs * Ct[None, :, :], axis=1) + Dv[:, None] * u  # (BD, T)
        if HAS_Z:
            zt = tl.load(z_ptr + offs_dl, mask=m_dl, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(out_ptr + offs_dl, y, mask=m_dl)
        h = _at(hs, offs_t, T - 1)  # steps past L keep the state (a = 1, x = 0)
    tl.store(last_ptr + state_off, h, mask=m_dn)


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr,
                dB_ptr, dC_ptr, dh0_ptr, D, L, N, E, G, n_chunks,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr):  # fmt: skip
    b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n, offs_t = tl.arange(0, BN), tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    rows = b * D + offs_d
    bc0 = (b * G + (pid_d * BD) // E) * N * L
    m_dn = md[:, None] & mn[None, :]
    state_off = rows[:, None] * N + offs_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m_dn, other=0.0)
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0) if HAS_D else tl.zeros((BD,), tl.float32)
    # dLoss/dh at the end of the chunk being processed, through the next chunk's first decay
    carry = (
        tl.load(dlast_ptr + state_off, mask=m_dn, other=0.0)
        if HAS_DLAST
        else tl.zeros((BD, BN), tl.float32)
    )
    dA = tl.zeros((BD, BN), tl.float32)
    dD = tl.zeros((BD,), tl.float32)
    dbias = tl.zeros((BD,), tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * T + offs_t
        m_dl, m_nl = md[:, None] & (t < L)[None, :], mn[:, None] & (t < L)[None, :]
        offs_dl = rows[:, None] * L + t[None, :]
        bc_off = bc0 + offs_n[:, None] * L + t[None, :]
        h_start = tl.load(
            ckpt_ptr + (rows[:, None] * n_chunks + c) * N + offs_n[None, :], mask=m_dn, other=0.0
        )
        u, pre, dt, Bt, a, x = _chunk(u_ptr, delta_ptr, bias_ptr, B_ptr, offs_dl, m_dl,
                                      bc_off, m_nl, offs_d, md, A, HAS_BIAS, SOFTPLUS)  # fmt: skip
        a_cum, h_loc = tl.associative_scan((a, x), 2, _combine)
        hs = a_cum * h_start[:, :, None] + h_loc  # h_t
        Ct = tl.load(C_ptr + bc_off, mask=m_nl, other=0.0).to(tl.float32)
        g = tl.load(dout_ptr + offs_dl, mask=m_dl, other=0.0).to(tl.float32)  # dLoss/dout
        if HAS_Z:
            zt = tl.load(z_ptr + offs_dl, mask=m_dl, other=0.0).to(tl.float32)
            sg = tl.sigmoid(zt)
            y = tl.sum(hs * Ct[None, :, :], axis=1) + Dv[:, None] * u
            tl.store(dz_ptr + offs_dl, g * y * sg * (1.0 + zt * (1.0 - sg)), mask=m_dl)
            g = g * zt * sg  # dLoss/dy
        dD += tl.sum(g * u, axis=1)
        # dh_t = g_t C_t + a_{t+1} dh_{t+1}: reverse scan; the last step takes the carry
        _u, _pre, _dt, _B, a_next, _x = _chunk(u_ptr, delta_ptr, bias_ptr, B_ptr, offs_dl + 1,
                                               md[:, None] & (t + 1 < L)[None, :], bc_off + 1,
                                               mn[:, None] & (t + 1 < L)[None, :], offs_d, md, A,
                                               HAS_BIAS, SOFTPLUS)  # fmt: skip
        is_last = (offs_t == T - 1)[None, None, :]
        val = g[:, None, :] * Ct[None, :, :] + tl.where(is_last, carry[:, :, None], 0.0)
        coef = tl.where(is_last, 0.0, a_next)
        _c, dh = tl.associative_scan((coef, val), 2, _combine, reverse=True)
        carry = _at(dh * a, offs_t, 0)
        dlog = dh * (hs - x)  # dLoss/d(dt A): a_t h_{t-1} = h_t - x_t
        dA += tl.sum(dlog * dt[:, None, :], axis=2)
        dhB = dh * Bt[None, :, :]
        ddt = tl.sum(dlog * A[:, :, None] + dhB * u[:, None, :], axis=1)  # (BD, T)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(pre)
        ddt = tl.where(m_dl, ddt, 0.0)
        dbias += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + offs_dl, ddt, mask=m_dl)
        tl.store(du_ptr + offs_dl, tl.sum(dhB, axis=1) * dt + g * Dv[:, None], mask=m_dl)
        tl.atomic_add(dB_ptr + bc_off, tl.sum(dh * (dt * u)[:, None, :], axis=0), mask=m_nl)
        tl.atomic_add(dC_ptr + bc_off, tl.sum(hs * g[:, None, :], axis=0), mask=m_nl)
    tl.store(dA_ptr + state_off, dA, mask=m_dn)
    tl.store(dD_ptr + rows, dD, mask=md)
    tl.store(dbias_ptr + rows, dbias, mask=md)
    if HAS_H0:
        tl.store(dh0_ptr + state_off, carry, mask=m_dn)


def _block_d(dim: int, groups: int) -> int:
    """Channels per program: CONFIG's, halved until it divides the channels of one group."""
    bd = CONFIG["block_d"]
    while (dim // groups) % bd:
        bd //= 2
    return bd


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class TritonSelectiveScan(torch.autograd.Function):
    """(out, last) of the fused kernels; see ``selective_scan_triton``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        batch, dim, length = u.shape
        d_state, groups = A.shape[1], 1 if B.dim() == 3 else B.shape[1]
        u, delta, B, C, z = _c(u), _c(delta), _c(B), _c(C), _c(z)
        A32 = A.float().contiguous()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()
        h032 = None if h0 is None else h0.float().contiguous()
        bd, chunk = _block_d(dim, groups), CONFIG["chunk"]
        n_chunks = triton.cdiv(length, chunk)
        out = torch.empty_like(u)
        ckpt = u.new_empty(batch, dim, max(n_chunks, 1), d_state, dtype=torch.float32)
        last = u.new_empty(batch, dim, d_state, dtype=torch.float32)
        dummy = A32
        _fwd_kernel[(batch, triton.cdiv(dim, bd))](
            u, delta, A32, B, C, D32 if D is not None else dummy, z if z is not None else u,
            bias32 if bias32 is not None else dummy, h032 if h0 is not None else dummy,
            out, ckpt, last, dim, length, d_state, dim // groups, groups, n_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus, HAS_H0=h0 is not None,
            BD=bd, BN=triton.next_power_of_2(d_state), T=chunk, num_warps=CONFIG["fwd_warps"],
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, ckpt)
        ctx.info = (softplus, chunk, h0 is not None, A.dtype,
                    None if D is None else D.dtype, None if delta_bias is None else delta_bias.dtype,
                    None if h0 is None else h0.dtype)  # fmt: skip
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, ckpt = ctx.saved_tensors
        softplus, chunk, has_h0, A_dtype, D_dtype, bias_dtype, h0_dtype = ctx.info
        batch, dim, length = u.shape
        d_state, groups = A32.shape[1], 1 if B.dim() == 3 else B.shape[1]
        dout = dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = u.new_empty(batch, dim, d_state, dtype=torch.float32)
        dD = u.new_empty(batch, dim, dtype=torch.float32)
        dbias = torch.empty_like(dD)
        dB = torch.zeros(B.shape, device=B.device, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=C.device, dtype=torch.float32)
        dh0 = u.new_empty(batch, dim, d_state, dtype=torch.float32) if has_h0 else None
        bd = _block_d(dim, groups)
        dummy = A32
        _bwd_kernel[(batch, triton.cdiv(dim, bd))](
            u, delta, A32, B, C, D32 if D32 is not None else dummy, z if z is not None else u,
            bias32 if bias32 is not None else dummy, ckpt, dout,
            dlast if dlast is not None else dummy, du, ddelta, dz if dz is not None else du,
            dA, dD, dbias, dB, dC, dh0 if dh0 is not None else dA,
            dim, length, d_state, dim // groups, groups, triton.cdiv(length, chunk),
            HAS_D=D32 is not None, HAS_Z=z is not None, HAS_BIAS=bias32 is not None,
            SOFTPLUS=softplus, HAS_H0=has_h0, HAS_DLAST=dlast is not None,
            BD=bd, BN=triton.next_power_of_2(d_state), T=chunk, num_warps=CONFIG["bwd_warps"],
        )  # fmt: skip
        return (
            du,
            ddelta,
            dA.sum(0).to(A_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D32 is None else dD.sum(0).to(D_dtype),
            dz,
            None if bias32 is None else dbias.sum(0).to(bias_dtype),
            None if dh0 is None else dh0.to(h0_dtype),
            None,
        )


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused selective scan on CUDA; arguments, shapes and results as ``selective_scan_ref``."""
    out, last = TritonSelectiveScan.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus
    )
    return (out, last) if return_last_state else out
