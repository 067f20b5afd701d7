"""Selective scan in pure PyTorch, chunked over time: the path for MPS and any device without a kernel.

Within a chunk of T steps the linear recurrence h_t = a_t h_{t-1} + b_t is solved by log2(T) doubling
steps (Hillis-Steele), vectorized over (batch, channel, time, state); chunks run one after another.
The autograd Function keeps only the state at each chunk start and recomputes a chunk in the backward,
where the adjoint recurrence is the same scan run backwards. No float64, no host syncs, every tensor
is created on the input's device: the code runs on MPS and on the meta device.

Shape key: B batch, G groups of B/C, E channels per group (D = G * E), L length, T chunk, N state.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 64
_MAX_CHUNK_ELEMENTS = 1 << 24  # (B, D, T, N) elements per chunk tensor


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """Solve h_t = a_t * h_{t-1} + b_t along dim -2 (h_{-1} = h0) by doubling; a, b: (..., T, N)."""
    length = a.shape[-2]
    bufs = [
        (torch.empty_like(a), torch.empty_like(b)) for _ in range(min(2, (length - 1).bit_length()))
    ]
    k, i = 1, 0
    while k < length:  # read (a, b), write the other buffer pair; the inputs are never written
        a_next, b_next = bufs[i % 2]
        b_next[..., :k, :] = b[..., :k, :]
        torch.addcmul(b[..., k:, :], a[..., k:, :], b[..., :-k, :], out=b_next[..., k:, :])
        if 2 * k < length or h0 is not None:  # the last level needs no products of a
            a_next[..., :k, :] = a[..., :k, :]
            torch.mul(a[..., k:, :], a[..., :-k, :], out=a_next[..., k:, :])
            a = a_next
        b = b_next
        k, i = 2 * k, i + 1
    if h0 is not None:
        b = torch.addcmul(b, a, h0.unsqueeze(-2))
    return b


def _grouped(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None):
    """Views with a group axis: u, dt (B, G, E, L, 1); A (G, E, 1, N); B, C (B, G, 1, L, N)."""
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups = B.shape[1]
    e = dim // groups
    u5 = u.reshape(batch, groups, e, length, 1)
    dt5 = dt.reshape(batch, groups, e, length, 1)
    A4 = A.reshape(groups, e, 1, A.shape[1])
    B5 = B.transpose(-1, -2).unsqueeze(2)  # (B, G, 1, L, N)
    C5 = C.transpose(-1, -2).unsqueeze(2)
    h5 = None if h0 is None else h0.reshape(batch, groups, e, 1, A.shape[1])
    return u5, dt5, A4, B5, C5, h5


def _chunk_size(batch: int, dim: int, d_state: int, chunk: int) -> int:
    while chunk > 8 and batch * dim * chunk * d_state > _MAX_CHUNK_ELEMENTS:
        chunk //= 2
    return chunk


def _chunk_terms(u5, dt5, A4, B5, sl: slice) -> tuple[Tensor, Tensor]:
    """Decay a = exp(dt A) and input b = dt u B for one chunk: (B, G, E, T, N)."""
    a = torch.exp(dt5[..., sl, :] * A4)
    b = (dt5[..., sl, :] * u5[..., sl, :]) * B5[..., sl, :]
    return a, b


class ChunkedSSM(torch.autograd.Function):
    """(y, last) = SSM core in chunked PyTorch; see ``ssm_scan_chunked``."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk):
        batch, dim, length = u.shape
        d_state = A.shape[1]
        u5, dt5, A4, B5, C5, h = _grouped(u, dt, A, B, C, h0)
        chunk = _chunk_size(batch, dim, d_state, chunk)
        if h is None:
            h = u.new_zeros(batch, B5.shape[1], dim // B5.shape[1], 1, d_state)
        ys, starts = [], []
        for t0 in range(0, length, chunk):
            sl = slice(t0, t0 + chunk)
            starts.append(h)
            a, b = _chunk_terms(u5, dt5, A4, B5, sl)
            hs = linear_scan(a, b, h.squeeze(-2))  # (B, G, E, T, N)
            ys.append((hs * C5[..., sl, :]).sum(-1))  # (B, G, E, T)
            h = hs[..., -1:, :]
        y = torch.cat(ys, -1).reshape(batch, dim, length) if ys else u.new_zeros(batch, dim, 0)
        ctx.save_for_backward(u, dt, A, B, C, *starts)
        ctx.chunk, ctx.has_h0 = chunk, h0 is not None
        return y, h.reshape(batch, dim, d_state)

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, B, C, *starts = ctx.saved_tensors
        batch, dim, length = u.shape
        u5, dt5, A4, B5, C5, _ = _grouped(u, dt, A, B, C, None)
        groups, e, d_state = B5.shape[1], dim // B5.shape[1], A.shape[1]
        dy5 = dy.reshape(batch, groups, e, length, 1)
        carry = u.new_zeros(batch, groups, e, d_state)  # dLoss/dh at the chunk's last step, via a
        if dlast is not None:
            carry = dlast.reshape(batch, groups, e, d_state)
        du, ddt, dB, dC = [], [], [], []
        dA = torch.zeros_like(A4)
        for i in range(len(starts) - 1, -1, -1):
            sl = slice(i * ctx.chunk, (i + 1) * ctx.chunk)
            a, b = _chunk_terms(u5, dt5, A4, B5, sl)
            hs = linear_scan(a, b, starts[i].squeeze(-2))  # h_t, (B, G, E, T, N)
            h_prev = torch.cat([starts[i], hs[..., :-1, :]], -2)  # h_{t-1}
            g = dy5[..., sl, :] * C5[..., sl, :]  # dLoss/dh_t from y_t
            # dh_t = g_t + a_{t+1} dh_{t+1}: the same scan on the time-reversed chunk
            a_next = torch.cat([a[..., 1:, :], torch.ones_like(a[..., :1, :])], -2)
            dh = linear_scan(a_next.flip(-2), g.flip(-2), carry).flip(-2)
            carry = dh[..., 0, :] * a[..., 0, :]
            dlog = dh * h_prev * a  # dLoss/d(dt A)
            dA = dA + (dlog * dt5[..., sl, :]).sum((0, 3), keepdim=True).squeeze(0)
            dhB = dh * B5[..., sl, :]
            ddt.append((dlog * A4 + dhB * u5[..., sl, :]).sum(-1))
            du.append((dhB * dt5[..., sl, :]).sum(-1))
            dB.append((dh * (dt5[..., sl, :] * u5[..., sl, :])).sum(2))  # (B, G, T, N)
            dC.append((hs * dy5[..., sl, :]).sum(2))
        du = torch.cat(du[::-1], -1).reshape(batch, dim, length)
        ddt = torch.cat(ddt[::-1], -1).reshape(batch, dim, length)
        dB = torch.cat(dB[::-1], -2).transpose(-1, -2)  # (B, G, N, L)
        dC = torch.cat(dC[::-1], -2).transpose(-1, -2)
        if B.dim() == 3:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        dh0 = carry.reshape(batch, dim, d_state) if ctx.has_h0 else None
        return du, ddt, dA.reshape(dim, d_state), dB, dC, dh0, None


def ssm_scan_chunked(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor]:
    """SSM core in chunked PyTorch: y_t = <h_t, C_t>, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t.

    All inputs fp32. u, dt: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L);
    initial_state: (B, D, N) or None. Returns y (B, D, L) and the last state (B, D, N).
    """
    return ChunkedSSM.apply(u, dt, A, B, C, initial_state, chunk)
