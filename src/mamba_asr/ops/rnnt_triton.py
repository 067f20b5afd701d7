"""The RNN-T lattice recursions in Triton: the whole alpha table in one launch, the whole beta
table in another.

Shape key: B batch, T frames (max of logit_lengths), U + 1 token positions (U max of
target_lengths); the grids are (B, T, U + 1) fp32 log-probs of the blank move (t -> t + 1) and of
the emission (u -> u + 1) at each cell, as ``rnnt_loss.rnnt_lattice`` takes them.

One program owns one utterance and walks its rows t (forward for alpha, backward for beta) with
the U + 1 token positions of a row in one block. Along a row the recursion is linear in the
log semiring,

    alpha(t, u) = logaddexp(alpha(t - 1, u) + blank(t - 1, u), alpha(t, u - 1) + emit(t, u - 1))
    beta(t, u)  = logaddexp(blank(t, u) + beta(t + 1, u), emit(t, u) + beta(t, u + 1)),

so each row is one ``tl.associative_scan`` of (coefficient, value) pairs under
(a1, x1) . (a2, x2) = (a1 + a2, logaddexp(x1 + a2, x2)) (forward for alpha, reversed for beta);
the previous row stays in registers. Cells outside an utterance (t >= T_b or u > U_b) are -inf,
beta(T_b - 1, U_b) = blank(T_b - 1, U_b), alpha(0, 0) = 0; the results equal the anti-diagonal
PyTorch recursion of ``rnnt_loss.lattice_torch``. The loss and the gradients stay in PyTorch.
This module imports triton; ``rnnt_loss`` imports it only when the triton backend is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _logaddexp(x, y):
    """log(exp(x) + exp(y)), -inf when both are -inf (no -inf - -inf on the way)."""
    hi = tl.maximum(x, y)
    lo = tl.minimum(x, y)
    return hi + tl.log(1.0 + tl.exp(lo - tl.where(hi == float("-inf"), 0.0, hi)))


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 + a2, _logaddexp(x1 + a2, x2)


@triton.jit
def _alpha_kernel(blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, alpha_ptr, T, U1,
                  BLOCK_U: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    offs_u = tl.arange(0, BLOCK_U)
    in_row = offs_u < U1
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    base = b.to(tl.int64) * T * U1
    neg_inf = float("-inf")
    start = tl.where(offs_u == 0, 0.0, neg_inf)  # row t = 0: only (0, 0) starts a path
    prev = tl.full((BLOCK_U,), neg_inf, tl.float32)  # alpha(t - 1, :) + blank(t - 1, :)
    # coefficient of alpha(t, u - 1): emit(t, u - 1); none at u = 0
    m_emit = in_row & (offs_u > 0)
    a = tl.load(emit_ptr + base + offs_u - 1, mask=m_emit, other=neg_inf)
    for t in range(T):
        row = base + t * U1
        # the next row's inputs, loaded while this row is scanned
        more = t + 1 < T
        a_next = tl.load(emit_ptr + row + U1 + offs_u - 1, mask=m_emit & more, other=neg_inf)
        blank = tl.load(blank_ptr + row + offs_u, mask=in_row, other=neg_inf)  # blank(t, :)
        x = tl.where(t == 0, start, prev)
        _a, alpha = tl.associative_scan((a, x), 0, _combine)
        valid = (t < t_len) & (offs_u <= u_len) & in_row
        alpha = tl.where(valid | ((t == 0) & (offs_u == 0)), alpha, neg_inf)
        tl.store(alpha_ptr + row + offs_u, alpha, mask=in_row)
        prev = alpha + blank
        a = a_next


@triton.jit
def _beta_kernel(blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, beta_ptr, T, U1,
                 BLOCK_U: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    offs_u = tl.arange(0, BLOCK_U)
    in_row = offs_u < U1
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    base = b.to(tl.int64) * T * U1
    neg_inf = float("-inf")
    nxt = tl.full((BLOCK_U,), neg_inf, tl.float32)  # beta(t + 1, :)
    last = base + (T - 1) * U1
    blank = tl.load(blank_ptr + last + offs_u, mask=in_row, other=neg_inf)
    a = tl.load(emit_ptr + last + offs_u, mask=in_row, other=neg_inf)  # of beta(t, u + 1)
    for i in range(T):
        t = T - 1 - i
        row = base + t * U1
        # the next row's (t - 1) inputs, loaded while this row is scanned
        more = in_row & (t > 0)
        blank_next = tl.load(blank_ptr + row - U1 + offs_u, mask=more, other=neg_inf)
        a_next = tl.load(emit_ptr + row - U1 + offs_u, mask=more, other=neg_inf)
        valid = (t < t_len) & (offs_u <= u_len) & in_row
        # after the last cell's blank the path ends: beta "after" it is 0
        after = tl.where((t == t_len - 1) & (offs_u == u_len), 0.0, nxt)
        x = tl.where(valid, blank + after, neg_inf)
        _a, beta = tl.associative_scan((a, x), 0, _combine, reverse=True)
        beta = tl.where(valid, beta, neg_inf)
        tl.store(beta_ptr + row + offs_u, beta, mask=in_row)
        nxt = beta
        blank = blank_next
        a = a_next


def _warps(block_u: int) -> int:
    return 1 if block_u <= 64 else 2 if block_u <= 128 else 4 if block_u <= 512 else 8


def lattice_triton(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha and beta (B, T, U + 1) and log P(y|x) (B,) = beta[:, 0, 0], one launch each.

    lp_blank, lp_emit: (B, T, U + 1) log-probs (computed in fp32); logit_lengths,
    target_lengths: (B,) integers. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
    """
    batch, frames, u1 = lp_blank.shape
    blank = lp_blank.float().contiguous()
    emit = lp_emit.float().contiguous()
    tlen = logit_lengths.to(device=blank.device, dtype=torch.int32).contiguous()
    ulen = target_lengths.to(device=blank.device, dtype=torch.int32).contiguous()
    alpha = torch.empty_like(blank)
    beta = torch.empty_like(blank)
    block = max(triton.next_power_of_2(u1), 16)
    args = (blank, emit, tlen, ulen)
    _alpha_kernel[(batch,)](*args, alpha, frames, u1, BLOCK_U=block, num_warps=_warps(block))
    _beta_kernel[(batch,)](*args, beta, frames, u1, BLOCK_U=block, num_warps=_warps(block))
    return alpha, beta, beta[:, 0, 0]
