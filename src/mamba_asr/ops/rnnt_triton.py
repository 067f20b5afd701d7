"""The RNN-T lattice recursions in Triton, and the kernels around them that the triton backend of
the pruned loss runs (``ops.pruned_rnnt``): both tables in one launch (the alpha programs and the
beta programs side by side), the move posteriors and -log P(y|x) in another; the same over the
pruned band in band coordinates (B, T, R); the band's log-probs and gradient over V; the simple
joint's normalizer, log-probs and gradient; the prune ranges.

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
PyTorch recursion of ``rnnt_loss.lattice_torch``. Every kernel here has that PyTorch reference
(``tests/ops/test_rnnt_triton.py`` compares tables, losses, posteriors and gradients). This module imports triton; ``rnnt_loss`` imports it only when the triton backend is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba_asr.ops.triton_launch import cdiv, launch, next_pow2


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
def _alpha_rows(b, blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, alpha_ptr, T, U1,
                BLOCK_U: tl.constexpr):  # fmt: skip
    """Alpha of utterance b, row by row (t = 0 .. T - 1)."""
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
def _beta_rows(b, blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, beta_ptr, T, U1,
               BLOCK_U: tl.constexpr):  # fmt: skip
    """Beta of utterance b, row by row (t = T - 1 .. 0). Each row is held reversed (element r is
    column u = U1 - 1 - r), so the recursion from u + 1 to u is a forward scan: a reverse
    ``associative_scan`` flips its inputs and outputs with butterfly shuffles."""
    offs_r = tl.arange(0, BLOCK_U)
    u = U1 - 1 - offs_r
    in_row = offs_r < U1
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    base = b.to(tl.int64) * T * U1
    neg_inf = float("-inf")
    nxt = tl.full((BLOCK_U,), neg_inf, tl.float32)  # beta(t + 1, :)
    last = base + (T - 1) * U1
    blank = tl.load(blank_ptr + last + u, mask=in_row, other=neg_inf)
    a = tl.load(emit_ptr + last + u, mask=in_row, other=neg_inf)  # of beta(t, u + 1)
    for i in range(T):
        t = T - 1 - i
        row = base + t * U1
        # the next row's (t - 1) inputs, loaded while this row is scanned
        more = in_row & (t > 0)
        blank_next = tl.load(blank_ptr + row - U1 + u, mask=more, other=neg_inf)
        a_next = tl.load(emit_ptr + row - U1 + u, mask=more, other=neg_inf)
        valid = (t < t_len) & (u <= u_len) & in_row
        # after the last cell's blank the path ends: beta "after" it is 0
        after = tl.where((t == t_len - 1) & (u == u_len), 0.0, nxt)
        x = tl.where(valid, blank + after, neg_inf)
        _a, beta = tl.associative_scan((a, x), 0, _combine)
        beta = tl.where(valid, beta, neg_inf)
        tl.store(beta_ptr + row + u, beta, mask=in_row)
        nxt = beta
        blank = blank_next
        a = a_next


@triton.jit
def _lattice_kernel(blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, alpha_ptr, beta_ptr, B, T, U1,
                    BLOCK_U: tl.constexpr):  # fmt: skip
    """Programs 0 .. B - 1 fill alpha, B .. 2B - 1 beta: both tables in one launch, side by side."""
    pid = tl.program_id(0)
    if pid < B:
        _alpha_rows(pid, blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, alpha_ptr, T, U1, BLOCK_U)
    else:
        _beta_rows(pid - B, blank_ptr, emit_ptr, tlen_ptr, ulen_ptr, beta_ptr, T, U1, BLOCK_U)


@triton.jit
def _posterior_kernel(blank_ptr, emit_ptr, alpha_ptr, beta_ptr, tlen_ptr, ulen_ptr, pb_ptr,
                      pe_ptr, nll_ptr, T, U1, BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr):  # fmt: skip
    """Move posteriors exp(alpha + lp + beta after the move - log P) of rows t0 .. t0 + BLOCK_T - 1
    of utterance b (0 where no path exists), and nll = -log P = -beta(0, 0) (by the first block)."""
    b = tl.program_id(0)
    tb = tl.program_id(1)
    neg_inf = float("-inf")
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    offs_u = tl.arange(0, BLOCK_U)[None, :]
    m = (offs_t < T) & (offs_u < U1)
    base = b.to(tl.int64) * T * U1
    cell = base + offs_t * U1 + offs_u
    log_p = tl.load(beta_ptr + base)
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    alpha = tl.load(alpha_ptr + cell, mask=m, other=neg_inf)
    lpb = tl.load(blank_ptr + cell, mask=m, other=neg_inf)
    lpe = tl.load(emit_ptr + cell, mask=m, other=neg_inf)
    b_next_t = tl.load(beta_ptr + cell + U1, mask=m & (offs_t + 1 < T), other=neg_inf)
    b_next_t = tl.where((offs_t == t_len - 1) & (offs_u == u_len), 0.0, b_next_t)
    b_next_u = tl.load(beta_ptr + cell + 1, mask=m & (offs_u + 1 < U1), other=neg_inf)
    feasible = log_p > neg_inf
    a = alpha - tl.where(feasible, log_p, 0.0)
    pb = tl.where(feasible, tl.exp(a + lpb + b_next_t), 0.0)
    pe = tl.where(feasible, tl.exp(a + lpe + b_next_u), 0.0)
    tl.store(pb_ptr + cell, pb, mask=m)
    tl.store(pe_ptr + cell, pe, mask=m)
    if tb == 0:
        tl.store(nll_ptr + b, -log_p)


def _warps(block_u: int) -> int:
    return 1 if block_u <= 16 else 2 if block_u <= 32 else 4 if block_u <= 512 else 8


def int32_lengths(logit_lengths: Tensor, target_lengths: Tensor, device: torch.device):
    """The lattice's lengths (B,) as contiguous int32 tensors on ``device``, as the kernels read
    them (no copy where they already are)."""
    tlen = logit_lengths.to(device=device, dtype=torch.int32).contiguous()
    ulen = target_lengths.to(device=device, dtype=torch.int32).contiguous()
    return tlen, ulen


def lattice_triton(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha and beta (B, T, U + 1) and log P(y|x) (B,) = beta[:, 0, 0], in one launch (the alpha
    and the beta programs run side by side).

    lp_blank, lp_emit: (B, T, U + 1) log-probs (computed in fp32); logit_lengths,
    target_lengths: (B,) integers. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
    """
    batch, frames, u1 = lp_blank.shape
    blank = lp_blank.float().contiguous()
    emit = lp_emit.float().contiguous()
    tlen, ulen = int32_lengths(logit_lengths, target_lengths, blank.device)
    alpha = torch.empty_like(blank)
    beta = torch.empty_like(blank)
    block = max(next_pow2(u1), 16)
    launch(_lattice_kernel, (2 * batch,), blank, emit, tlen, ulen, alpha, beta, batch, frames, u1,
        BLOCK_U=block, num_warps=_warps(block))  # fmt: skip
    return alpha, beta, beta[:, 0, 0]


def lattice_posteriors_triton(
    lp_blank: Tensor,
    lp_emit: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    tables: bool = False,
) -> tuple[Tensor, ...]:
    """-log P(y|x) (B,) and the blank and emission move posteriors (B, T, U + 1) (zero where an
    utterance has no path): two launches, the tables, then the posteriors."""
    batch, frames, u1 = lp_blank.shape
    blank = lp_blank.float().contiguous()
    emit = lp_emit.float().contiguous()
    tlen, ulen = int32_lengths(logit_lengths, target_lengths, blank.device)
    alpha = torch.empty_like(blank)
    beta = torch.empty_like(blank)
    block = max(next_pow2(u1), 16)
    launch(_lattice_kernel, (2 * batch,), blank, emit, tlen, ulen, alpha, beta, batch, frames, u1,
        BLOCK_U=block, num_warps=_warps(block))  # fmt: skip
    pb, pe = torch.empty_like(blank), torch.empty_like(blank)
    nll = torch.empty(batch, device=blank.device, dtype=torch.float32)
    bt = max(1, min(next_pow2(frames), 4096 // block))
    launch(_posterior_kernel, (batch, cdiv(frames, bt)), blank, emit, alpha, beta, tlen, ulen, pb,
        pe, nll, frames, u1, BLOCK_T=bt, BLOCK_U=block, num_warps=4)  # fmt: skip
    return (nll, pb, pe, alpha, beta) if tables else (nll, pb, pe)


# --- the pruned loss's band, in band coordinates ---------------------------------------------
# Band tables are (B, T, R): row t holds token positions u = s_t + r, r = 0 .. R - 1, s (B, T) the
# band's starts (``pruned_rnnt.prune_ranges``). alpha(t, u) needs alpha(t - 1, u), which sits in
# row t - 1 at r + s_t - s_{t-1}: the previous row is shifted before the row's scan (and the next
# row likewise for beta). Cells outside the band are -inf, as in the -inf grid of the full lattice.


# Band lattice settings, chosen on an H200 by scripts/device/rnnt_debug.py (all variants give the
# same tables; the band lattice + posteriors at B16 R5: T250 0.149 ms, T500 0.259 ms with these):
# rows padded to at least BAND_MIN_BLOCK lanes; BAND_SHIFT, how a row is moved to the next band:
# 0 a masked max over a (BLOCK_R, BLOCK_R) tile, 1 tl.gather, 2 re-reading the stored row, -1 no
# band kernel (the band scattered into a -inf (B, T, U + 1) grid for the full-grid kernels);
# BAND_STAGES: software pipelining of the loops (None: triton's default). Each row reads the
# band's starts s_t, s_{t -/+ 1} afresh: carrying s from one iteration to the next (s_prev = s;
# s = s_next) gave wrong tables from the third row on when compiled for the H200 (right in the
# interpreter).
BAND_MIN_BLOCK = 8
BAND_SHIFT = 1
BAND_STAGES = None


@triton.jit
def _shift(prev, d, BLOCK_R: tl.constexpr, SHIFT: tl.constexpr):
    """out[r] = prev[r + d], -inf where r + d is outside the block (prev holds -inf past R)."""
    k = tl.arange(0, BLOCK_R)
    if SHIFT == 1:
        idx = k + d
        inside = (idx >= 0) & (idx < BLOCK_R)
        got = tl.gather(prev, tl.minimum(tl.maximum(idx, 0), BLOCK_R - 1), 0)
        return tl.where(inside, got, float("-inf"))
    else:
        sel = tl.where(k[None, :] == k[:, None] + d, prev[None, :], float("-inf"))
        return tl.max(sel, axis=1)


@triton.jit
def _band_alpha_rows(b, blank_ptr, emit_ptr, s_ptr, tlen_ptr, ulen_ptr, alpha_ptr, T, R,
                     BLOCK_R: tl.constexpr, SHIFT: tl.constexpr):  # fmt: skip
    offs = tl.arange(0, BLOCK_R)
    in_r = offs < R
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    base = b.to(tl.int64) * T * R
    sbase = b.to(tl.int64) * T
    neg_inf = float("-inf")
    prev = tl.full((BLOCK_R,), neg_inf, tl.float32)  # alpha(t - 1, .) + blank(t - 1, .), band t - 1
    m_emit = in_r & (offs > 0)
    a = tl.load(emit_ptr + base + offs - 1, mask=m_emit, other=neg_inf)  # emit(t, u - 1)
    for t in range(T):
        row = base + t * R
        more = t + 1 < T
        a_next = tl.load(emit_ptr + row + R + offs - 1, mask=m_emit & more, other=neg_inf)
        s = tl.load(s_ptr + sbase + t)  # the band's start in rows t and t - 1
        s_prev = tl.load(s_ptr + sbase + tl.maximum(t - 1, 0))
        blank = tl.load(blank_ptr + row + offs, mask=in_r, other=neg_inf)
        start = tl.where(s + offs == 0, 0.0, neg_inf)
        if SHIFT == 2:  # re-read row t - 1 (stored by this program) at the shifted positions
            tl.debug_barrier()
            idx = offs + s - s_prev
            ok = (t > 0) & in_r & (idx >= 0) & (idx < R)
            prow = row - R
            shifted = tl.load(alpha_ptr + prow + idx, mask=ok, other=neg_inf) + tl.load(
                blank_ptr + prow + idx, mask=ok, other=neg_inf
            )
        else:
            shifted = _shift(prev, s - s_prev, BLOCK_R, SHIFT)
        x = tl.where(t == 0, start, shifted)
        _a, alpha = tl.associative_scan((a, x), 0, _combine)
        valid = (t < t_len) & (s + offs <= u_len) & in_r
        alpha = tl.where(valid, alpha, neg_inf)
        tl.store(alpha_ptr + row + offs, alpha, mask=in_r)
        prev = alpha + blank
        a = a_next


@triton.jit
def _band_beta_rows(b, blank_ptr, emit_ptr, s_ptr, tlen_ptr, ulen_ptr, beta_ptr, T, R,
                    BLOCK_R: tl.constexpr, SHIFT: tl.constexpr):  # fmt: skip
    offs = tl.arange(0, BLOCK_R)
    in_r = offs < R
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    base = b.to(tl.int64) * T * R
    sbase = b.to(tl.int64) * T
    neg_inf = float("-inf")
    nxt = tl.full((BLOCK_R,), neg_inf, tl.float32)  # beta(t + 1, .), band t + 1
    last = base + (T - 1) * R
    blank = tl.load(blank_ptr + last + offs, mask=in_r, other=neg_inf)
    a = tl.load(emit_ptr + last + offs, mask=in_r, other=neg_inf)  # of beta(t, u + 1)
    for i in range(T):
        t = T - 1 - i
        row = base + t * R
        more = in_r & (t > 0)
        blank_next = tl.load(blank_ptr + row - R + offs, mask=more, other=neg_inf)
        a_next = tl.load(emit_ptr + row - R + offs, mask=more, other=neg_inf)
        s = tl.load(s_ptr + sbase + t)  # the band's start in rows t and t + 1
        s_nxt = tl.load(s_ptr + sbase + tl.minimum(t + 1, T - 1))
        valid = (t < t_len) & (s + offs <= u_len) & in_r
        if SHIFT == 2:  # re-read row t + 1 (stored by this program) at the shifted positions
            tl.debug_barrier()
            idx = offs + s - s_nxt
            ok = (t + 1 < T) & in_r & (idx >= 0) & (idx < R)
            shifted = tl.load(beta_ptr + row + R + idx, mask=ok, other=neg_inf)
        else:
            shifted = _shift(nxt, s - s_nxt, BLOCK_R, SHIFT)
        after = tl.where((t == t_len - 1) & (s + offs == u_len), 0.0, shifted)
        x = tl.where(valid, blank + after, neg_inf)
        _a, beta = tl.associative_scan((a, x), 0, _combine, reverse=True)
        beta = tl.where(valid, beta, neg_inf)
        tl.store(beta_ptr + row + offs, beta, mask=in_r)
        nxt = beta
        blank = blank_next
        a = a_next


@triton.jit
def _band_lattice_kernel(blank_ptr, emit_ptr, s_ptr, tlen_ptr, ulen_ptr, alpha_ptr, beta_ptr, B,
                         T, R, BLOCK_R: tl.constexpr, SHIFT: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    if pid < B:
        _band_alpha_rows(pid, blank_ptr, emit_ptr, s_ptr, tlen_ptr, ulen_ptr, alpha_ptr, T, R,
                         BLOCK_R, SHIFT)  # fmt: skip
    else:
        _band_beta_rows(pid - B, blank_ptr, emit_ptr, s_ptr, tlen_ptr, ulen_ptr, beta_ptr, T, R,
                        BLOCK_R, SHIFT)  # fmt: skip


@triton.jit
def _band_posterior_kernel(blank_ptr, emit_ptr, s_ptr, alpha_ptr, beta_ptr, tlen_ptr, ulen_ptr,
                           pb_ptr, pe_ptr, nll_ptr, T, R, BLOCK_T: tl.constexpr,
                           BLOCK_R: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    tb = tl.program_id(1)
    neg_inf = float("-inf")
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    offs_r = tl.arange(0, BLOCK_R)[None, :]
    in_t = offs_t < T
    m = in_t & (offs_r < R)
    base = b.to(tl.int64) * T * R
    sbase = b.to(tl.int64) * T
    cell = base + offs_t * R + offs_r
    # log P = beta(0, 0): band row 0 must start at u = 0
    log_p = tl.where(tl.load(s_ptr + sbase) == 0, tl.load(beta_ptr + base), neg_inf)
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    alpha = tl.load(alpha_ptr + cell, mask=m, other=neg_inf)
    lpb = tl.load(blank_ptr + cell, mask=m, other=neg_inf)
    lpe = tl.load(emit_ptr + cell, mask=m, other=neg_inf)
    s_t = tl.load(s_ptr + sbase + offs_t, mask=in_t, other=0)
    more = offs_t + 1 < T
    s_n = tl.load(s_ptr + sbase + offs_t + 1, mask=more, other=0)
    r_n = offs_r + s_t - s_n  # where (t + 1, u) sits in row t + 1
    m_n = m & more & (r_n >= 0) & (r_n < R)
    b_next_t = tl.load(beta_ptr + base + (offs_t + 1) * R + r_n, mask=m_n, other=neg_inf)
    b_next_t = tl.where((offs_t == t_len - 1) & (s_t + offs_r == u_len), 0.0, b_next_t)
    b_next_u = tl.load(beta_ptr + cell + 1, mask=m & (offs_r + 1 < R), other=neg_inf)
    feasible = log_p > neg_inf
    a = alpha - tl.where(feasible, log_p, 0.0)
    pb = tl.where(feasible, tl.exp(a + lpb + b_next_t), 0.0)
    pe = tl.where(feasible, tl.exp(a + lpe + b_next_u), 0.0)
    tl.store(pb_ptr + cell, pb, mask=m)
    tl.store(pe_ptr + cell, pe, mask=m)
    if tb == 0:
        tl.store(nll_ptr + b, -log_p)


def band_lattice_triton(
    lp_blank: Tensor, lp_emit: Tensor, starts: Tensor, logit_lengths: Tensor,
    target_lengths: Tensor, tables: bool = False, u1: int | None = None,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The pruned lattice in band coordinates: lp_blank, lp_emit (B, T, R) fp32 log-probs of the
    moves out of cell (t, starts[b, t] + r); starts (B, T) non-negative integers. Returns nll
    (B,) and the blank and emission posteriors (B, T, R) (zero where no path fits the band);
    tables: also alpha and beta (B, T, R). Two launches. u1: U + 1, the lattice's width (needed
    only by BAND_SHIFT = -1, which runs the full-grid kernels on the band scattered into it)."""
    batch, frames, width = lp_blank.shape
    if BAND_SHIFT < 0:  # the band scattered into a -inf (B, T, U + 1) grid, the full recursion
        ranges = starts[:, :, None].long() + torch.arange(width, device=lp_blank.device)
        grid = torch.full((batch, frames, u1), float("-inf"), device=lp_blank.device)
        res = lattice_posteriors_triton(
            grid.scatter(2, ranges, lp_blank.float()), grid.scatter(2, ranges, lp_emit.float()),
            logit_lengths, target_lengths, tables,
        )  # fmt: skip
        return (res[0], *(x.gather(2, ranges) for x in res[1:]))
    blank = lp_blank.float().contiguous()
    emit = lp_emit.float().contiguous()
    s = starts.to(torch.int32).contiguous()
    tlen, ulen = int32_lengths(logit_lengths, target_lengths, blank.device)
    alpha, beta = torch.empty_like(blank), torch.empty_like(blank)
    block = max(next_pow2(width), BAND_MIN_BLOCK)
    opts = {} if BAND_STAGES is None else {"num_stages": BAND_STAGES}
    launch(_band_lattice_kernel, (2 * batch,), blank, emit, s, tlen, ulen, alpha, beta, batch,
        frames, width, BLOCK_R=block, SHIFT=BAND_SHIFT, num_warps=1, **opts)  # fmt: skip
    pb, pe = torch.empty_like(blank), torch.empty_like(blank)
    nll = torch.empty(batch, device=blank.device, dtype=torch.float32)
    bt = max(1, min(next_pow2(frames), 2048 // block))
    launch(_band_posterior_kernel, (batch, cdiv(frames, bt)), blank, emit, s, alpha, beta, tlen,
        ulen, pb, pe, nll, frames, width, BLOCK_T=bt, BLOCK_R=block, num_warps=4)  # fmt: skip
    return (nll, pb, pe, alpha, beta) if tables else (nll, pb, pe)


@triton.jit
def _band_logprob_kernel(x_ptr, ranges_ptr, tg_ptr, lse_ptr, lpb_ptr, lpe_ptr, sym_ptr, N, TR, R,
                         U, V, blank, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """Rows (b, t, r) of the band logits, ROWS at a time: the logsumexp over V, the blank's and
    the symbol's log-probs; the symbol is targets[b, u] at u = ranges[b, t, r] (the blank at
    u = U). A row whose ranges are not s, s + 1, .. gets NaN (the band kernels need consecutive
    positions)."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    ok = row < N
    b = row // TR
    r = row % R
    u = tl.load(ranges_ptr + row, mask=ok, other=0)
    s = tl.load(ranges_ptr + row - r, mask=ok, other=0)
    tok = ok & (u < U)
    sym = tl.load(tg_ptr + b * U + u, mask=tok, other=0).to(tl.int64)
    sym = tl.where(tok, sym, blank)
    sym = tl.minimum(tl.maximum(sym, 0), V - 1)
    offs = tl.arange(0, BLOCK_V)[None, :]
    xrow = x_ptr + row[:, None] * V
    mx = tl.full((ROWS, BLOCK_V), float("-inf"), tl.float32)
    acc = tl.zeros((ROWS, BLOCK_V), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        m = ok[:, None] & (v0 + offs < V)
        x = tl.load(xrow + v0 + offs, mask=m, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(mx, x)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(mx - ref) + tl.exp(x - ref)
        mx = m_new
    top = tl.max(mx, 1)
    top_ref = tl.where(top == float("-inf"), 0.0, top)
    lse = top + tl.log(tl.sum(acc * tl.exp(mx - top_ref[:, None]), 1))
    lse = tl.where(u == s + r, lse, float("nan"))
    tl.store(lse_ptr + row, lse, mask=ok)
    xb = tl.load(x_ptr + row * V + blank, mask=ok, other=0.0).to(tl.float32)
    xs = tl.load(x_ptr + row * V + sym, mask=ok, other=0.0).to(tl.float32)
    tl.store(lpb_ptr + row, xb - lse, mask=ok)
    tl.store(lpe_ptr + row, xs - lse, mask=ok)
    tl.store(sym_ptr + row, sym.to(tl.int32), mask=ok)


@triton.jit
def _band_grad_kernel(x_ptr, lse_ptr, sym_ptr, pb_ptr, pe_ptr, g_ptr, out_ptr, N, TR, V, blank,
                      ROWS: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """d loss / d logits of rows (b, t, r), ROWS at a time: -softmax (gb + ge) + gb at the blank
    + ge at the symbol, gb = -g[b] * blank posterior, ge = -g[b] * emission posterior."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ok = row < N
    b = row // TR
    scale = -tl.load(g_ptr + b, mask=ok, other=0.0).to(tl.float32)
    gb = (scale * tl.load(pb_ptr + row, mask=ok, other=0.0))[:, None]
    ge = (scale * tl.load(pe_ptr + row, mask=ok, other=0.0))[:, None]
    lse = tl.load(lse_ptr + row, mask=ok, other=0.0)[:, None]
    sym = tl.load(sym_ptr + row, mask=ok, other=0)[:, None]
    offs = tl.arange(0, BLOCK_V)[None, :]
    for v0 in range(0, V, BLOCK_V):
        v = v0 + offs
        m = ok[:, None] & (v < V)
        x = tl.load(x_ptr + row[:, None] * V + v, mask=m, other=0.0).to(tl.float32)
        g = -tl.exp(x - lse) * (gb + ge) + tl.where(v == blank, gb, 0.0)
        g += tl.where(v == sym, ge, 0.0)
        tl.store(out_ptr + row[:, None] * V + v, g.to(out_ptr.dtype.element_ty), mask=m)


def _row_launch(vocab: int) -> tuple[int, int, int]:
    """Rows per program, BLOCK_V and warps for the kernels over rows of V logits."""
    block = min(max(next_pow2(vocab), 32), 4096)
    rows = max(1, min(64, 2048 // block))
    size = rows * block
    return rows, block, 1 if size <= 256 else 2 if size <= 512 else 4 if size <= 2048 else 8


def band_logprobs_triton(
    logits: Tensor, ranges: Tensor, targets: Tensor, blank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """logits (B, T, R, V) contiguous, ranges (B, T, R), targets (B, U) -> lse, lp_blank, lp_emit
    (B, T, R) fp32 and the symbols (B, T, R) int32, one launch."""
    batch, frames, width, vocab = logits.shape
    lse = torch.empty(batch, frames, width, device=logits.device, dtype=torch.float32)
    lpb, lpe = torch.empty_like(lse), torch.empty_like(lse)
    sym = torch.empty(lse.shape, device=logits.device, dtype=torch.int32)
    per, block, warps = _row_launch(vocab)
    rows = batch * frames * width
    if rows:
        launch(_band_logprob_kernel, (cdiv(rows, per),), logits, ranges.contiguous(),
            targets.contiguous(), lse, lpb, lpe, sym, rows, frames * width, width,
            targets.shape[1], vocab, blank, ROWS=per, BLOCK_V=block, num_warps=warps)  # fmt: skip
    return lse, lpb, lpe, sym


def band_grad_triton(
    logits: Tensor, lse: Tensor, sym: Tensor, pb: Tensor, pe: Tensor, grad_out: Tensor, blank: int
) -> Tensor:
    """d (sum_b grad_out[b] nll_b) / d logits (B, T, R, V), in the logits' dtype, one launch."""
    batch, frames, width, vocab = logits.shape
    out = torch.empty_like(logits)
    per, block, warps = _row_launch(vocab)
    rows = batch * frames * width
    if rows:
        launch(_band_grad_kernel, (cdiv(rows, per),), logits, lse, sym, pb, pe,
            grad_out.float().contiguous(), out, rows, frames * width, vocab, blank, ROWS=per,
            BLOCK_V=block, num_warps=warps)  # fmt: skip
    return out


@triton.jit
def _simple_grid_kernel(am_ptr, lm_ptr, tg_ptr, sums_ptr, amax_ptr, lmax_ptr, lpb_ptr, lpe_ptr, T,
                        U1, V, blank, BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr):  # fmt: skip
    """The simple joint's move log-probs of rows t0 .. t0 + BLOCK_T - 1 of utterance b:
    norm = log(sums) + am_max[t] + lm_max[u]; blank: am[t, blank] + lm[u, blank] - norm;
    emission: am[t, y_u] + lm[u, y_u] - norm for u < U, -inf at u = U."""
    b = tl.program_id(0).to(tl.int64)
    tb = tl.program_id(1)
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    offs_u = tl.arange(0, BLOCK_U)[None, :]
    in_t = offs_t < T
    in_u = offs_u < U1
    m = in_t & in_u
    n_tok = U1 - 1
    tok = offs_u < n_tok
    y = tl.load(tg_ptr + b * n_tok + offs_u, mask=tok, other=0).to(tl.int64)
    y = tl.minimum(tl.maximum(y, 0), V - 1)
    am_row = am_ptr + (b * T + offs_t) * V
    lm_row = lm_ptr + (b * U1 + offs_u) * V
    am_b = tl.load(am_row + blank, mask=in_t, other=0.0)
    lm_b = tl.load(lm_row + blank, mask=in_u, other=0.0)
    am_y = tl.load(am_row + y, mask=m & tok, other=0.0)
    lm_y = tl.load(lm_row + y, mask=tok, other=0.0)
    cell = (b * T + offs_t) * U1 + offs_u
    sums = tl.load(sums_ptr + cell, mask=m, other=1.0)
    am_max = tl.load(amax_ptr + b * T + offs_t, mask=in_t, other=0.0)
    lm_max = tl.load(lmax_ptr + b * U1 + offs_u, mask=in_u, other=0.0)
    norm = tl.log(tl.maximum(sums, 1.1754943508222875e-38)) + am_max + lm_max
    tl.store(lpb_ptr + cell, am_b + lm_b - norm, mask=m)
    tl.store(lpe_ptr + cell, tl.where(tok, am_y + lm_y - norm, float("-inf")), mask=m)


def simple_grids_triton(
    am: Tensor, lm: Tensor, targets: Tensor, sums: Tensor, am_max: Tensor, lm_max: Tensor,
    blank: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """am (B, T, V), lm (B, U + 1, V) fp32 contiguous, targets (B, U), sums (B, T, U + 1) =
    exp(am - am_max) @ exp(lm - lm_max)^T, am_max (B, T), lm_max (B, U + 1) -> the blank and
    emission log-probs (B, T, U + 1) of the joint am[t] + lm[u] under log_softmax, one launch."""
    batch, frames, vocab = am.shape
    u1 = lm.shape[1]
    lpb = torch.empty(batch, frames, u1, device=am.device, dtype=torch.float32)
    lpe = torch.empty_like(lpb)
    block = max(next_pow2(u1), 2)
    bt = max(1, min(next_pow2(frames), 2048 // block))
    launch(_simple_grid_kernel, (batch, cdiv(frames, bt)), am, lm, targets.contiguous(),
        sums.contiguous(), am_max.contiguous(), lm_max.contiguous(), lpb, lpe, frames, u1, vocab,
        blank, BLOCK_T=bt, BLOCK_U=block, num_warps=4)  # fmt: skip
    return lpb, lpe


@triton.jit
def _max_fn(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_fn(a, b):
    return tl.minimum(a, b)


@triton.jit
def _prune_ranges_kernel(pb_ptr, pe_ptr, tlen_ptr, ulen_ptr, s_ptr, out_ptr, T, U1, R,
                         BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK_R: tl.constexpr):  # fmt: skip
    """``pruned_rnnt.prune_ranges`` for utterance b: the window of R positions with the most
    posterior mass at each frame (ROWS frames at a time, into s_ptr), then over the whole
    sequence the fixes that make the band valid, and the (T, R) ranges s_t + r."""
    b = tl.program_id(0).to(tl.int64)
    t_len = tl.load(tlen_ptr + b)
    u_len = tl.load(ulen_ptr + b)
    last_start = tl.maximum(u_len - R + 1, 0)
    offs_s = tl.arange(0, BLOCK_U)[None, :]
    for t0 in range(0, T, ROWS):
        offs_t = t0 + tl.arange(0, ROWS)[:, None]
        in_t = offs_t < T
        cell = (b * T + offs_t) * U1 + offs_s
        win = tl.zeros((ROWS, BLOCK_U), tl.float32)
        for j in range(R):  # mass of positions s .. s + R - 1
            m = in_t & (offs_s + j < U1)
            win += tl.load(pb_ptr + cell + j, mask=m, other=0.0) + tl.load(
                pe_ptr + cell + j, mask=m, other=0.0
            )
        win = tl.where(offs_s <= last_start, win, -1.0)
        win = tl.where(offs_s + R <= U1, win, -2.0)
        best = tl.argmax(win, 1, tie_break_left=True)  # (ROWS,)
        rows = t0 + tl.arange(0, ROWS)
        tl.store(s_ptr + b * T + rows, best.to(tl.int32), mask=rows < T)
    tl.debug_barrier()
    t = tl.arange(0, BLOCK_T)
    in_seq = t < T
    s = tl.load(s_ptr + b * T + t, mask=in_seq, other=0)
    s = tl.where(t >= t_len - 1, last_start, s)
    s = tl.where(t == 0, 0, s)
    s = tl.where(in_seq, s, last_start)
    s = tl.associative_scan(s, 0, _max_fn)  # non-decreasing
    ramp = (R - 1) * t
    s = tl.associative_scan(s - ramp, 0, _max_fn, reverse=True) + ramp  # steps <= R - 1
    s = tl.where(t == 0, 0, s)
    s = tl.where(in_seq, s - ramp, 2147483647 // 2)
    s = tl.associative_scan(s, 0, _min_fn) + ramp  # keep s_0 = 0
    offs_r = tl.arange(0, BLOCK_R)[None, :]
    out = s[:, None].to(tl.int64) + offs_r
    tl.store(out_ptr + (b * T + t[:, None]) * R + offs_r, out, mask=in_seq[:, None] & (offs_r < R))


def prune_ranges_triton(
    blank_posterior: Tensor, emit_posterior: Tensor, logit_lengths: Tensor,
    target_lengths: Tensor, width: int,
) -> Tensor:  # fmt: skip
    """``pruned_rnnt.prune_ranges`` in one launch: (B, T, R) long, R = width."""
    batch, frames, u1 = blank_posterior.shape
    pb = blank_posterior.float().contiguous()
    pe = emit_posterior.float().contiguous()
    tlen, ulen = int32_lengths(logit_lengths, target_lengths, pb.device)
    s = torch.empty(batch, frames, device=pb.device, dtype=torch.int32)
    out = torch.empty(batch, frames, width, device=pb.device, dtype=torch.long)
    block_u = next_pow2(u1)
    rows = max(1, min(64, 4096 // block_u))  # rows * block_u >= 128: no lane holds a copy
    launch(_prune_ranges_kernel, (batch,), pb, pe, tlen, ulen, s, out, frames, u1, width,
        BLOCK_T=max(next_pow2(frames), 128), BLOCK_U=block_u, ROWS=rows, BLOCK_R=next_pow2(width),
        num_warps=4)  # fmt: skip
    return out


# --- the simple loss: its normalizer's exponentials and its gradient, in few launches ---------


@triton.jit
def _row_max_exp_kernel(x_ptr, max_ptr, exp_ptr, N, V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Rows of x (N, V), ROWS at a time: the max m, and exp(x - m)."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ok = row[:, None] < N
    offs = tl.arange(0, BLOCK_V)[None, :]
    base = row[:, None] * V
    mx = tl.full((ROWS, BLOCK_V), float("-inf"), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(x_ptr + base + v0 + offs, mask=ok & (v0 + offs < V), other=float("-inf"))
        mx = tl.maximum(mx, x.to(tl.float32))
    m = tl.max(mx, 1)
    tl.store(max_ptr + row, m, mask=row < N)
    for v0 in range(0, V, BLOCK_V):
        msk = ok & (v0 + offs < V)
        x = tl.load(x_ptr + base + v0 + offs, mask=msk, other=0.0).to(tl.float32)
        tl.store(exp_ptr + base + v0 + offs, tl.exp(x - m[:, None]), mask=msk)


def row_max_exp_triton(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., V) -> its max over V (..., 1) and exp(x - max) (..., V), fp32, one launch."""
    x = x.contiguous()
    vocab = x.shape[-1]
    mx = torch.empty(*x.shape[:-1], 1, device=x.device, dtype=torch.float32)
    ex = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    rows = mx.numel()
    per, block, warps = _row_launch(vocab)
    if rows:
        launch(_row_max_exp_kernel, (cdiv(rows, per),), x, mx, ex, rows, vocab, ROWS=per,
            BLOCK_V=block, num_warps=warps)  # fmt: skip
    return mx, ex


@triton.jit
def _simple_bwd_prep_kernel(pb_ptr, pe_ptr, sums_ptr, g_ptr, w_ptr, gb_ptr, ge_ptr, T, U1,
                            BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr):  # fmt: skip
    """G = -g[b] * posteriors (the gradient to the move log-probs) and W = (G_blank + G_emit) /
    sums (0 where sums underflowed), rows t0 .. t0 + BLOCK_T - 1 of utterance b."""
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    offs_u = tl.arange(0, BLOCK_U)[None, :]
    m = (offs_t < T) & (offs_u < U1)
    cell = (b * T + offs_t) * U1 + offs_u
    scale = -tl.load(g_ptr + b).to(tl.float32)
    gb = scale * tl.load(pb_ptr + cell, mask=m, other=0.0)
    ge = scale * tl.load(pe_ptr + cell, mask=m, other=0.0)
    sums = tl.load(sums_ptr + cell, mask=m, other=1.0)
    w = tl.where(sums > 1.1754943508222875e-38, (gb + ge) / sums, 0.0)
    tl.store(w_ptr + cell, w, mask=m)
    tl.store(gb_ptr + cell, gb, mask=m)
    tl.store(ge_ptr + cell, ge, mask=m)


@triton.jit
def _simple_bwd_finish_kernel(d_ptr, exp_ptr, gb_ptr, ge_ptr, tg_ptr, N, M, V, blank, stride_n,
                              stride_m, AM: tl.constexpr, BLOCK_V: tl.constexpr,
                              BLOCK_M: tl.constexpr):  # fmt: skip
    """Row n of d am (AM: n = t, the other axis m = u) or d lm (n = u, m = t), in place over
    dense = W @ exp of the other side: d = -exp * dense + (sum over m of G_blank) at the blank +
    G_emit at the symbols: for am, G_emit(t, u) at y_u for each u < U; for lm, the sum over t
    of G_emit(t, u) at y_u (u < U)."""
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    offs_m = tl.arange(0, BLOCK_M)
    g_base = b * N * M + n * stride_n  # G (B, T, U + 1): t * U1 + u
    n_tok = tl.where(AM, M - 1, N - 1)
    gb_sum = tl.zeros((BLOCK_M,), tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + offs_m
        gb_sum += tl.load(gb_ptr + g_base + mm * stride_m, mask=mm < M, other=0.0)
    gb_tot = tl.sum(gb_sum, 0)
    offs = tl.arange(0, BLOCK_V)
    base = row * V
    for v0 in range(0, V, BLOCK_V):
        v = v0 + offs
        dense = tl.load(d_ptr + base + v, mask=v < V, other=0.0)
        ex = tl.load(exp_ptr + base + v, mask=v < V, other=0.0)
        tl.store(d_ptr + base + v, -ex * dense + tl.where(v == blank, gb_tot, 0.0), mask=v < V)
    tl.debug_barrier()
    if AM:  # d am[t, y_u] += G_emit(t, u), u < U (symbols may repeat: atomic adds)
        for m0 in range(0, M, BLOCK_M):
            u = m0 + offs_m
            tok = u < n_tok
            y = tl.load(tg_ptr + b * n_tok + u, mask=tok, other=0).to(tl.int64)
            y = tl.minimum(tl.maximum(y, 0), V - 1)
            ge = tl.load(ge_ptr + g_base + u * stride_m, mask=tok, other=0.0)
            tl.atomic_add(d_ptr + base + y, ge, mask=tok, sem="relaxed")
    else:  # d lm[u, y_u] += sum over t of G_emit(t, u), u < U
        if n < n_tok:
            ge_sum = tl.zeros((BLOCK_M,), tl.float32)
            for m0 in range(0, M, BLOCK_M):
                mm = m0 + offs_m
                ge_sum += tl.load(ge_ptr + g_base + mm * stride_m, mask=mm < M, other=0.0)
            y = tl.load(tg_ptr + b * n_tok + n).to(tl.int64)
            y = tl.minimum(tl.maximum(y, 0), V - 1)
            tl.atomic_add(d_ptr + base + y, tl.sum(ge_sum, 0), sem="relaxed")


def simple_grads_triton(
    am_exp: Tensor, lm_exp: Tensor, sums: Tensor, post_blank: Tensor, post_emit: Tensor,
    targets: Tensor, grad_out: Tensor, blank: int, need_am: bool = True, need_lm: bool = True,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """The simple loss's gradients to am (B, T, V) and lm (B, U + 1, V), fp32: one kernel for G
    and W, a batched matmul and one kernel per side (``pruned_rnnt._SimpleTritonFn``)."""
    batch, frames, u1 = sums.shape
    vocab = am_exp.shape[-1]
    w, gb, ge = (torch.empty_like(sums) for _ in range(3))
    block = max(next_pow2(u1), 2)
    bt = max(1, min(next_pow2(frames), 2048 // block))
    launch(_simple_bwd_prep_kernel, (batch, cdiv(frames, bt)), post_blank, post_emit, sums,
        grad_out.float().contiguous(), w, gb, ge, frames, u1, BLOCK_T=bt, BLOCK_U=block,
        num_warps=4)  # fmt: skip
    _per, vblock, warps = _row_launch(vocab)
    targets = targets.contiguous()
    d_am = d_lm = None
    if need_am:
        d_am = torch.bmm(w, lm_exp)  # (B, T, V)
        if d_am.numel():
            launch(_simple_bwd_finish_kernel, (batch * frames,), d_am, am_exp, gb, ge, targets,
                frames, u1, vocab, blank, u1, 1, AM=True, BLOCK_V=vblock, BLOCK_M=min(block, 1024),
                num_warps=warps)  # fmt: skip
    if need_lm:
        d_lm = torch.bmm(w.transpose(1, 2), am_exp)  # (B, U + 1, V)
        if d_lm.numel():
            mblock = min(max(next_pow2(frames), 2), 1024)
            launch(_simple_bwd_finish_kernel, (batch * u1,), d_lm, lm_exp, gb, ge, targets, u1,
                frames, vocab, blank, 1, u1, AM=False, BLOCK_V=vblock, BLOCK_M=mblock,
                num_warps=warps)  # fmt: skip
    return d_am, d_lm


# --- the joiner's hidden layer on the band -----------------------------------------------------


@triton.jit
def _tanh(x):
    """tanh in fp32 from one exp (triton has no tanh of its own): sign(x) (1 - e) / (1 + e),
    e = exp(-2 |x|); within ~1e-7 of torch.tanh."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _band_join_kernel(am_ptr, lm_ptr, ranges_ptr, out_ptr, N, TR, R, U1, J, ROWS: tl.constexpr,
                      BLOCK_J: tl.constexpr):  # fmt: skip
    """Rows (b, t, r) of the band, ROWS at a time: out = tanh(am[b, t] + lm[b, ranges[b, t, r]])
    over J, computed in fp32, stored in out's dtype."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    ok = row < N
    b = row // TR
    u = tl.load(ranges_ptr + row, mask=ok, other=0).to(tl.int64)
    u = tl.minimum(tl.maximum(u, 0), U1 - 1)
    a_row = (row // R)[:, None] * J  # (b, t)
    l_row = (b * U1 + u)[:, None] * J
    offs = tl.arange(0, BLOCK_J)[None, :]
    for j0 in range(0, J, BLOCK_J):
        j = j0 + offs
        m = ok[:, None] & (j < J)
        a = tl.load(am_ptr + a_row + j, mask=m, other=0.0).to(tl.float32)
        lv = tl.load(lm_ptr + l_row + j, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row[:, None] * J + j, _tanh(a + lv).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _band_join_grad_kernel(g_ptr, h_ptr, ranges_ptr, dam_ptr, dlm_ptr, NBT, T, R, U1, J,
                           ROWS: tl.constexpr, BLOCK_J: tl.constexpr):  # fmt: skip
    """Frames (b, t), ROWS at a time: with gz = g (1 - h^2) on the band rows r of the frame,
    d am[b, t] = sum_r gz (stored) and d lm[b, ranges[b, t, r]] += gz (fp32 atomics)."""
    bt = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    ok = bt < NBT
    b = bt // T
    offs = tl.arange(0, BLOCK_J)[None, :]
    for j0 in range(0, J, BLOCK_J):
        j = j0 + offs
        m = ok[:, None] & (j < J)
        acc = tl.zeros((ROWS, BLOCK_J), tl.float32)
        for r in range(0, R):
            row = bt * R + r
            u = tl.load(ranges_ptr + row, mask=ok, other=0).to(tl.int64)
            u = tl.minimum(tl.maximum(u, 0), U1 - 1)
            g = tl.load(g_ptr + row[:, None] * J + j, mask=m, other=0.0).to(tl.float32)
            h = tl.load(h_ptr + row[:, None] * J + j, mask=m, other=0.0).to(tl.float32)
            gz = g * (1.0 - h * h)
            acc += gz
            tl.atomic_add(dlm_ptr + (b * U1 + u)[:, None] * J + j, gz, mask=m)
        tl.store(dam_ptr + bt[:, None] * J + j, acc.to(dam_ptr.dtype.element_ty), mask=m)


def _join_launch(dim: int) -> tuple[int, int, int]:
    """Rows per program, BLOCK_J and warps for the band join kernels."""
    block = min(max(next_pow2(dim), 16), 512)
    rows = max(1, min(16, 2048 // block))
    size = rows * block
    return rows, block, 1 if size <= 256 else 2 if size <= 512 else 4


def band_join_triton(am_proj: Tensor, lm_proj: Tensor, ranges: Tensor) -> Tensor:
    """tanh(am_proj[b, t] + lm_proj[b, ranges[b, t, r]]) (B, T, R, J) in one launch; am_proj
    (B, T, J), lm_proj (B, U + 1, J) contiguous, ranges (B, T, R) integers. Out: the promoted
    dtype of the two inputs."""
    batch, frames, width = ranges.shape
    u1, dim = lm_proj.shape[1], lm_proj.shape[2]
    dtype = torch.result_type(am_proj, lm_proj)
    out = torch.empty(batch, frames, width, dim, device=am_proj.device, dtype=dtype)
    per, block, warps = _join_launch(dim)
    rows = batch * frames * width
    if rows and dim:
        launch(_band_join_kernel, (cdiv(rows, per),), am_proj, lm_proj, ranges, out, rows,
            frames * width, width, u1, dim, ROWS=per, BLOCK_J=block, num_warps=warps)  # fmt: skip
    return out


def band_join_grad_triton(
    grad: Tensor, hidden: Tensor, ranges: Tensor, u1: int, am_dtype: torch.dtype,
    lm_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients of ``band_join_triton`` to am_proj (B, T, J) and lm_proj (B, U + 1, J) from
    the gradient to its output and the output itself (tanh' = 1 - tanh^2), one launch; lm's
    gradient sums over the band rows that read each position (fp32 atomics)."""
    batch, frames, width, dim = hidden.shape
    d_am = torch.empty(batch, frames, dim, device=hidden.device, dtype=am_dtype)
    d_lm = torch.zeros(batch, u1, dim, device=hidden.device, dtype=torch.float32)
    per, block, warps = _join_launch(dim)
    per = max(1, per // 2)  # each program also walks the R rows of its frames
    n_bt = batch * frames
    if n_bt and dim:
        launch(_band_join_grad_kernel, (cdiv(n_bt, per),), grad, hidden, ranges, d_am, d_lm, n_bt,
            frames, width, u1, dim, ROWS=per, BLOCK_J=block, num_warps=warps)  # fmt: skip
    return d_am, d_lm.to(lm_dtype)
