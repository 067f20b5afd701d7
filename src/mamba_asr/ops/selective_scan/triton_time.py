"""Selective scan on CUDA with Triton, time-parallel: the sequence's steps spread over the lanes.

The layout of state-spaces/mamba's CUDA kernel, in Triton. One program owns (batch b, BD channels
of one group of B/C, the group the grid's third axis) and walks the sequence in chunks of TC steps;
within a chunk the steps are spread over the lanes (a few consecutive steps per thread), and the
states n = 0..N-1 are taken one after another in a loop, NU states a loop step (each group's loads
issued a step ahead when PREFETCH). For each state the recurrence h_t = a_t h_{t-1} + x_t is one
``tl.associative_scan`` along the chunk (in-thread, then across lanes), started from the state
carried over from the chunk before through a small fp32 buffer. Everything summed over the states
(y = <h, C>, and in the backward dLoss/d(dt), dLoss/du) then accumulates in each thread's
registers, step by step, with no exchange between lanes; per channel work (softplus, the gate, the
D skip) runs once per step. A thread holds a handful of values per step rather than the whole
state, so far fewer registers are live than in ``triton_kernel``'s layout (one thread per few
(state, channel) pairs with the chunk's steps inside it), and more warps fit on each SM.

The forward stores the state entering every chunk after the first (N fp32 values per channel and
chunk; the first chunk starts from the initial state, read where it lies, or zeros) and the last
state, and, when there is a gate z, the output before it (in u's dtype), as the peer's kernel keeps
``out``. The backward walks the chunks last to first: per state, it rebuilds h over the chunk from
the stored start (one scan) and runs the adjoint dh_t = C_t dLoss/dy_t + a_{t+1} dh_{t+1} as a
forward scan over the chunk's steps reversed with ``tl.gather`` (one shuffle per value; a reverse
``associative_scan`` flips its inputs and outputs with five butterfly shuffles per value each), its
decay a_{t+1} from the next step's dt (loaded shifted by one; the exp is recomputed rather than
exchanged between lanes). dA, dD and d(delta_bias) are summed in fp32 per program, then added
atomically (relaxed) into one zeroed fp32 buffer that also holds dB and dC; dB and dC are summed
over the program's channels, then added the same way, one add per program, state and step.

Arithmetic is fp32 throughout; the gate silu(z) is rounded to z's dtype as PyTorch rounds it.
Shape key as ``triton_kernel``: B batch, D channels, G groups of B/C (E = D / G each), L length,
N state.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mamba_asr.ops.selective_scan.gluon_seq import WARPS, seq_block
from mamba_asr.ops.selective_scan.triton_kernel import (
    CONFIG,
    LOG2E,
    chunk_dt,
    combine,
    fast_math,
    gate,
    scan_inputs,
    softplus,
)
from mamba_asr.ops.triton_launch import cdiv, launch

try:
    from mamba_asr.ops.selective_scan.gluon_seq import bwd_seq_kernel, fwd_seq_kernel
except ImportError:  # no gluon in this triton: seq_block is then always None
    fwd_seq_kernel = bwd_seq_kernel = None


@triton.jit
def _store_last(ptr, x, mask, offs_t, TC: tl.constexpr):
    """Store the chunk's last step of a (BD, TC) tile at ptr (BD,), from the thread that holds it
    (no reduction across lanes). The pointers are declared aligned as a contiguous tile's would
    be, so that triton keeps the tile's layout rather than moving it through shared memory; the
    stores stay scalar, each at its true address, since the mask differs from step to step and no
    vector can form."""
    p = tl.multiple_of((ptr - (TC - 1))[:, None] + offs_t[None, :], [1, 16])
    tl.store(p, x, mask=mask[:, None] & (offs_t == TC - 1)[None, :])


@triton.jit
def _scan_from(a, x, h0, offs_t, CARRY_IN: tl.constexpr):
    """h_t = a_t h_{t-1} + x_t along a (BD, TC) chunk from the state h0 (BD,) carried into it.
    CARRY_IN: h0 folded into the first step (a_0 h0 + x_0) before the scan, one multiply-add on
    one thread; else the scan from zero, then a_cum h0 added at every step. Folded, the loop over
    states is about 11% fewer instructions (the scan's running products of a go unused and the
    compiler leaves them out); the time kernels' `time_carry_in` setting."""
    if CARRY_IN:
        x = tl.where((offs_t == 0)[None, :], a * h0[:, None] + x, x)
        _a_cum, h = tl.associative_scan((a, x), 1, combine)
        return h
    else:
        a_cum, h_loc = tl.associative_scan((a, x), 1, combine)
        return a_cum * h0[:, None] + h_loc


@triton.jit
def entering_state(ck, h0row, c, md, N: tl.constexpr, HAS_H0: tl.constexpr):
    """(pointer row, mask) of the state entering chunk c: its checkpoint slot, or for the first
    chunk the initial state (zeros without one)."""
    row = tl.where(c == 0, h0row, ck + c * N)
    if HAS_H0:
        return row, md
    else:
        return row, md & (c > 0)


@triton.jit
def _rev(x, offs_t, TC: tl.constexpr):
    """A (BD, TC) tile with its steps in reverse order: one shuffle per value where a warp's lanes
    hold the whole chunk (``tl.associative_scan(..., reverse=True)`` flips its inputs and outputs
    with five butterfly shuffles per value each)."""
    return tl.gather(x, tl.broadcast_to((TC - 1 - offs_t)[None, :], x.shape), 1)


@triton.jit
def program_index(BATCH_FAST: tl.constexpr):
    """(batch, channel block, group of B/C) of this program. The grid is (batch, channel blocks
    of one group, groups), the first two swapped unless BATCH_FAST (the batch the fastest axis;
    else the channel blocks are, and programs that run side by side share one utterance's B and
    C, which stay in the SM's L1). The group is the grid's third axis rather than a channel
    block's index divided by the group's channels: a division by a run-time value held 16-44
    more registers in every program (sm_90, ``scripts/kernel_resources.py --groups 2``)."""
    g = tl.program_id(2)
    if BATCH_FAST:
        return tl.program_id(0), g * tl.num_programs(1) + tl.program_id(1), g
    else:
        return tl.program_id(1), g * tl.num_programs(0) + tl.program_id(0), g


@triton.jit
def program_channels(ckpt_ptr, D, L, G, n_chunks, N: tl.constexpr, BD: tl.constexpr,
                     BATCH_FAST: tl.constexpr):  # fmt: skip
    """What a time-parallel program (``program_index``) works on: (its BD channels, their mask,
    their rows of (B, D, .), the offset of its group of B/C, its rows of the checkpoints).
    Offsets are int64, as B D L may pass 2^31."""
    b, pid_d, grp = program_index(BATCH_FAST)
    offs_d = pid_d * BD + tl.arange(0, BD)
    md = offs_d < D
    rows = b.to(tl.int64) * D + offs_d
    bc0 = (b.to(tl.int64) * G + grp) * N * L
    return offs_d, md, rows, bc0, ckpt_ptr + rows * (n_chunks * N)


@triton.jit
def skip_and_bias(D_ptr, bias_ptr, offs_d, md, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BD: tl.constexpr):  # fmt: skip
    """D and delta_bias of the channels offs_d (BD,), fp32; zeros without them."""
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0) if HAS_D else tl.zeros((BD,), tl.float32)
    bias = (
        tl.load(bias_ptr + offs_d, mask=md, other=0.0) if HAS_BIAS else tl.zeros((BD,), tl.float32)
    )
    return Dv, bias


def _grid(batch: int, blocks: int, groups: int) -> tuple[int, int, int]:
    """blocks: channel blocks of one group."""
    return (batch, blocks, groups) if CONFIG["time_batch_fast"] else (blocks, batch, groups)


@triton.jit
def _fwd_loads(n0, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0, t, mt, L, N: tl.constexpr,
               NU: tl.constexpr):  # fmt: skip
    """(A log2 e, state entering the chunk (read at hrow, zero where not hok), B, C) of states
    n0 .. n0 + NU - 1, flat; zeros past N."""
    out = ()
    for j in tl.static_range(NU):
        n = n0 + j
        ok = n < N
        out = out + (
            tl.load(A_ptr + offs_d * N + n, mask=md & ok, other=0.0) * LOG2E,
            tl.load(hrow + n, mask=hok & ok, other=0.0),
            tl.load(B_ptr + bc0 + n * L + t, mask=mt & ok, other=0.0).to(tl.float32),
            tl.load(C_ptr + bc0 + n * L + t, mask=mt & ok, other=0.0).to(tl.float32),
        )
    return out


@triton.jit
def _fwd_time_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                     out_ptr, ypre_ptr, ckpt_ptr, last_ptr, D, L, G, n_chunks,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_H0: tl.constexpr,
                     SOFTPLUS: tl.constexpr, ROUND_GATE: tl.constexpr, SAVE_Y: tl.constexpr,
                     N: tl.constexpr, BD: tl.constexpr, TC: tl.constexpr,
                     NU: tl.constexpr, PREFETCH: tl.constexpr, BATCH_FAST: tl.constexpr,
                     CARRY_IN: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    # ckpt: (B, D, n_chunks, N) fp32, slot c >= 1 the state entering chunk c (the first chunk's is
    # the initial state h0, or zeros; slot 0 is not written); last: (B, D, N), the last state
    offs_d, md, rows, bc0, ck = program_channels(ckpt_ptr, D, L, G, n_chunks, N, BD, BATCH_FAST)
    offs_t = tl.arange(0, TC)
    Dv, bias = skip_and_bias(D_ptr, bias_ptr, offs_d, md, HAS_D, HAS_BIAS, BD)
    for c in range(n_chunks):
        hrow, hok = entering_state(ck, h0_ptr + rows * N, c, md, N, HAS_H0)
        # where the state leaving this chunk goes: the next chunk's slot, or last
        dst = tl.where(c + 1 < n_chunks, ck + (c + 1) * N, last_ptr + rows * N)
        t = c * TC + offs_t
        mt = t < L
        m_dt = md[:, None] & mt[None, :]
        offs_dt = rows[:, None] * L + t[None, :]
        u, pre, dt = chunk_dt(u_ptr, delta_ptr, offs_dt, m_dt, bias, SOFTPLUS, FAST)
        dtu = dt * u
        y = Dv[:, None] * u
        # the states NU at a time, as a loop (not fully unrolled: one group's values live at once);
        # each group's loads are issued a loop step ahead (PREFETCH), so their latency overlaps
        # the group before
        nxt = _fwd_loads(0, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0, t, mt, L, N, NU)
        for n0 in range(0, N, NU):
            if PREFETCH:
                cur = nxt
                nxt = _fwd_loads(
                    n0 + NU, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0, t, mt, L, N, NU
                )
            else:
                cur = _fwd_loads(
                    n0, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0, t, mt, L, N, NU
                )
            for j in tl.static_range(NU):
                A2, h0, Bn, Cn = cur[4 * j], cur[4 * j + 1], cur[4 * j + 2], cur[4 * j + 3]
                a = tl.math.exp2(dt * A2[:, None])
                hs = _scan_from(a, dtu * Bn[None, :], h0, offs_t, CARRY_IN)
                y += hs * Cn[None, :]
                _store_last(dst + n0 + j, hs, md & (n0 + j < N), offs_t, TC)
        if HAS_Z:
            if SAVE_Y:
                tl.store(ypre_ptr + offs_dt, y, mask=m_dt)
            zt = tl.load(z_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
            silu, _sg = gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
            y = y * silu
        tl.store(out_ptr + offs_dt, y, mask=m_dt)
        tl.debug_barrier()  # the states just stored are read by other threads in the next chunk


@triton.jit
def _bwd_scalars(n0, A_ptr, hrow, hok, src, sok, offs_d, md, N: tl.constexpr,
                 NU: tl.constexpr):  # fmt: skip
    """(A, state entering the chunk (at hrow, zero where not hok), adjoint from the chunk after (at
    src, zero where not sok)) of states n0 .. n0 + NU - 1, flat; zeros past N."""
    out = ()
    for j in tl.static_range(NU):
        n = n0 + j
        ok = n < N
        out = out + (
            tl.load(A_ptr + offs_d * N + n, mask=md & ok, other=0.0),
            tl.load(hrow + n, mask=hok & ok, other=0.0),
            tl.load(src + n, mask=sok & ok, other=0.0),
        )
    return out


@triton.jit
def _bwd_tiles(n0, B_ptr, C_ptr, bc0, t, mt, L, N: tl.constexpr, NU: tl.constexpr):
    """(B, C) over the chunk of states n0 .. n0 + NU - 1, flat; zeros past N."""
    out = ()
    for j in tl.static_range(NU):
        n = n0 + j
        ok = n < N
        out = out + (
            tl.load(B_ptr + bc0 + n * L + t, mask=mt & ok, other=0.0).to(tl.float32),
            tl.load(C_ptr + bc0 + n * L + t, mask=mt & ok, other=0.0).to(tl.float32),
        )
    return out


@triton.jit
def _bwd_time_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                     ypre_ptr, ckpt_ptr, dout_ptr, dlast_ptr, dhbuf_ptr, du_ptr, ddelta_ptr,
                     dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, D, L, G, n_chunks,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr,
                     SOFTPLUS: tl.constexpr, ROUND_GATE: tl.constexpr, N: tl.constexpr,
                     BD: tl.constexpr, TC: tl.constexpr, NU: tl.constexpr,
                     PREFETCH: tl.constexpr, BATCH_FAST: tl.constexpr,
                     CARRY_IN: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    # dhbuf: (2, B, D, N) fp32, dLoss/dh at the first step of the chunk after the one being
    # processed, alternating between the two halves (for the last chunk: dLoss/d(last state) from
    # dlast, or zeros); at the end the half n_chunks % 2 holds dLoss/dh_0. dA (D, N), dD and
    # d(delta_bias) (D,) fp32 zeros on entry: each program adds its sums atomically
    offs_d, md, rows, bc0, ck = program_channels(ckpt_ptr, D, L, G, n_chunks, N, BD, BATCH_FAST)
    offs_t = tl.arange(0, TC)
    dhb = dhbuf_ptr + rows * N
    half = (tl.num_programs(0) if BATCH_FAST else tl.num_programs(1)) * D * N
    Dv, bias = skip_and_bias(D_ptr, bias_ptr, offs_d, md, HAS_D, HAS_BIAS, BD)
    dD = tl.zeros((BD,), tl.float32)
    dbias = tl.zeros((BD,), tl.float32)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        hrow, hok = entering_state(ck, h0_ptr + rows * N, c, md, N, HAS_H0)
        t = c * TC + offs_t
        mt = t < L
        m_dt = md[:, None] & mt[None, :]
        offs_dt = rows[:, None] * L + t[None, :]
        u, pre, dt = chunk_dt(u_ptr, delta_ptr, offs_dt, m_dt, bias, SOFTPLUS, FAST)
        dtu = dt * u
        # the adjoint runs over the chunk's steps reversed (r = TC - 1 - t), as a forward scan:
        # its decay at step t is the next step's a_{t+1} (dt = 0 past L, where the decay is 1)
        m_nx = md[:, None] & (t + 1 < L)[None, :]
        pre_nx = tl.load(delta_ptr + offs_dt + 1, mask=m_nx, other=0.0).to(tl.float32)
        dt_nx = softplus(pre_nx + bias[:, None], FAST) if SOFTPLUS else pre_nx + bias[:, None]
        dt_nx_r = _rev(tl.where(m_nx, dt_nx, 0.0), offs_t, TC)
        g = tl.load(dout_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)  # dLoss/dout
        if HAS_Z:
            y = tl.load(ypre_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
            zt = tl.load(z_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
            silu, sg = gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
            tl.store(dz_ptr + offs_dt, g * y * sg * (1.0 + zt * (1.0 - sg)), mask=m_dt)
            g = g * silu  # dLoss/dy
        g = tl.where(m_dt, g, 0.0)
        g_r = _rev(g, offs_t, TC)
        dD += tl.sum(g * u, axis=1)
        ddt = tl.zeros((BD, TC), tl.float32)  # sum over states of dLoss/d(dt A) A
        dus = tl.zeros((BD, TC), tl.float32)  # sum over states of dLoss/dh B
        src = tl.where(cc == 0, dlast_ptr + rows * N, dhb + (cc % 2) * half)
        sok = md if HAS_DLAST else md & (cc > 0)
        dst = dhb + ((cc + 1) % 2) * half
        # PREFETCH: 1, the scalars (A, the state entering the chunk, the adjoint leaving it) of
        # the next group are loaded a loop step ahead; 2, its B and C too; 0, nothing ahead
        nxt_s = _bwd_scalars(0, A_ptr, hrow, hok, src, sok, offs_d, md, N, NU)
        nxt_t = _bwd_tiles(0, B_ptr, C_ptr, bc0, t, mt, L, N, NU)
        for n0 in range(0, N, NU):
            if PREFETCH >= 1:
                cur_s = nxt_s
                nxt_s = _bwd_scalars(n0 + NU, A_ptr, hrow, hok, src, sok, offs_d, md, N, NU)
            else:
                cur_s = _bwd_scalars(n0, A_ptr, hrow, hok, src, sok, offs_d, md, N, NU)
            if PREFETCH >= 2:
                cur_t = nxt_t
                nxt_t = _bwd_tiles(n0 + NU, B_ptr, C_ptr, bc0, t, mt, L, N, NU)
            else:
                cur_t = _bwd_tiles(n0, B_ptr, C_ptr, bc0, t, mt, L, N, NU)
            for j in tl.static_range(NU):
                n = n0 + j
                ok = n < N
                A, h0, dh1 = cur_s[3 * j], cur_s[3 * j + 1], cur_s[3 * j + 2]
                Bn, Cn = cur_t[2 * j], cur_t[2 * j + 1]
                A2 = A * LOG2E
                a = tl.math.exp2(dt * A2[:, None])
                x = dtu * Bn[None, :]
                hs = _scan_from(a, x, h0, offs_t, CARRY_IN)  # h_t
                a_nx_r = tl.math.exp2(dt_nx_r * A2[:, None])
                gc_r = g_r * _rev(tl.broadcast_to(Cn[None, :], (BD, TC)), offs_t, TC)
                dhs_r = _scan_from(a_nx_r, gc_r, dh1, offs_t, CARRY_IN)  # steps reversed
                # dLoss/dh at the chunk's first step, for the chunk before
                _store_last(dst + n, dhs_r, md & ok, offs_t, TC)
                dhs = _rev(dhs_r, offs_t, TC)
                # dLoss/d(dt A): dh_t a_t h_{t-1}, and a_t h_{t-1} = h_t - x_t
                dlog = dhs * (hs - x)
                dA_t = tl.sum(dlog * dt, axis=1)
                tl.atomic_add(dA_ptr + offs_d * N + n, dA_t, mask=md & ok, sem="relaxed")
                ddt += dlog * A[:, None]
                dus += dhs * Bn[None, :]
                tl.atomic_add(dB_ptr + bc0 + n * L + t, tl.sum(dhs * dtu, axis=0), mask=mt & ok,
                              sem="relaxed")  # fmt: skip
                tl.atomic_add(dC_ptr + bc0 + n * L + t, tl.sum(hs * g, axis=0), mask=mt & ok,
                              sem="relaxed")  # fmt: skip
        ddt += dus * u
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(pre)
        ddt = tl.where(m_dt, ddt, 0.0)
        dbias += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + offs_dt, ddt, mask=m_dt)
        tl.store(du_ptr + offs_dt, dus * dt + g * Dv[:, None], mask=m_dt)
        tl.debug_barrier()  # the adjoint states just stored are read by other threads next chunk
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD, mask=md, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias, mask=md, sem="relaxed")


class SeqPlan(NamedTuple):
    """How ``gluon_seq``'s kernels run a call: their chunk of steps, the checkpoint interval the
    forward writes, (warps, channels) of a forward program, and of a backward program (None: the
    time-parallel backward reads the checkpoints)."""

    steps: int
    every: int
    fwd: tuple[int, int]
    bwd: tuple[int, int] | None


def _seq_plan(u: torch.Tensor, d_state: int, channels: int, tc: int) -> SeqPlan | None:
    """The plan where CONFIG asks for ``gluon_seq`` (``kernel`` "seq": its forward and backward;
    ``time_fwd`` "seq": its forward before the time-parallel backward) and it applies (on CUDA,
    not in triton's interpreter; N a power of two up to 32; its chunk a power of two up to 32,
    dividing the time kernels' chunk when their backward follows), else None: the
    time-parallel kernels."""
    both = CONFIG["kernel"] == "seq"
    steps = CONFIG["seq_chunk"]
    if not (both or CONFIG["time_fwd"] == "seq") or not fast_math() or u.device.type != "cuda":
        return None
    if steps < 1 or steps > 32 or steps & (steps - 1) or (not both and tc % steps):
        return None
    fwd, bwd = seq_blocks(d_state, channels)
    if fwd is None:
        return None
    if not both:
        return SeqPlan(steps, tc, fwd, None)
    return None if bwd is None else SeqPlan(steps, steps, fwd, bwd)


def seq_blocks(d_state: int, channels: int) -> tuple[tuple[int, int] | None, ...]:
    """(warps, channels) of a ``gluon_seq`` forward program and of a backward program as CONFIG
    sets them (``seq_fwd_warps``, None: the most of ``gluon_seq.WARPS`` that divides a group of
    ``channels``; ``seq_bwd_warps``), each None where the kernels do not apply."""
    fwd_warps = CONFIG["seq_fwd_warps"]
    fwd = seq_block(d_state, channels, warps=WARPS if fwd_warps is None else (fwd_warps,))
    return fwd, seq_block(d_state, channels, warps=(CONFIG["seq_bwd_warps"],))


def _lanes_k() -> int | None:
    """K, the steps a lane holds in ``triton_lanes``' kernels, where CONFIG asks for them
    (``kernel`` "lanes", ``lanes_k`` 4 or 8), else None."""
    if CONFIG["kernel"] != "lanes":
        return None
    k = CONFIG["lanes_k"]
    if k not in (4, 8):
        raise ValueError(f"CONFIG lanes_k must be 4 or 8, got {k!r}")
    return k


def _lanes_time(dim: int, groups: int) -> int:
    """Lanes along time in ``triton_lanes``' programs (CONFIG ``lanes_time``: 32, 16 or 8; the
    warp's other 32 / that lanes hold as many channels), doubled until those channels divide one
    group's."""
    tl_ = CONFIG["lanes_time"]
    if tl_ not in (8, 16, 32):
        raise ValueError(f"CONFIG lanes_time must be 8, 16 or 32, got {tl_!r}")
    while (dim // groups) % (32 // tl_):
        tl_ *= 2
    return tl_


def _lanes_bwd_block(bd: int, lanes_t: int) -> int:
    """Channels a lanes backward program: bd (``_block_d``'s) with one channel's lanes filling a
    warp, else the 32 / lanes_t channels that share its lanes."""
    return bd if lanes_t == 32 else 32 // lanes_t


def _lanes_unroll(backward: bool) -> int:
    """States a loop step of ``triton_lanes``' forward or backward (CONFIG ``lanes_unroll``: one
    number for both, or [forward, backward])."""
    nu = CONFIG["lanes_unroll"]
    return nu if isinstance(nu, int) else nu[int(backward)]


def _lanes_bwd_prefetch() -> int:
    """The lanes backward's PREFETCH: 2 with CONFIG ``lanes_bwd_pingpong`` (two states a loop step,
    each one's loads issued while the other computes), 1 where ``lanes_prefetch`` has the
    backward load the next states a step ahead, else 0."""
    if CONFIG["lanes_bwd_pingpong"]:
        return 2
    return int(CONFIG["lanes_prefetch"] in (True, "bwd"))


def _lanes_bwd_one_state() -> bool:
    """Whether the lanes backward takes one state a loop step, each loaded a step ahead or not,
    not ping-pong: the loop the held values and the merged dA are built into."""
    return _lanes_unroll(True) == 1 and _lanes_bwd_prefetch() != 2


def _lanes_da_log(lanes_t: int, d_state: int) -> int:
    """The lanes backward's DA_LOG: log2(lanes_t) where CONFIG ``lanes_da_merge`` asks for dA's
    terms merged across the states (``triton_lanes._bwd_states``) and it applies (one state a loop
    step, the states in whole groups of lanes_t), else 0 (summed a state)."""
    if not CONFIG["lanes_da_merge"] or d_state % lanes_t or not _lanes_bwd_one_state():
        return 0
    return lanes_t.bit_length() - 1


def _lanes_held(lanes_t: int, d_state: int) -> bool:
    """The lanes backward's HELD: CONFIG ``lanes_bwd_held`` where it applies (one state a loop
    step, as many states as lanes a channel): each lane holds one state's A, entering state and
    carry, loaded once a chunk."""
    return CONFIG["lanes_bwd_held"] and d_state == lanes_t and _lanes_bwd_one_state()


def _lanes_fwd_held(lanes_t: int, d_state: int) -> bool:
    """The lanes forward's HELD: CONFIG ``lanes_fwd_held`` where it applies (at most lanes_t
    states, the backward's chunk in lanes, and a whole number of the forward's loop steps): A and
    the states entering each chunk held in the lanes, the checkpoints stored once a chunk."""
    return (CONFIG["lanes_fwd_held"] and d_state <= lanes_t
            and d_state % _lanes_unroll(False) == 0)  # fmt: skip


def _lanes_iv32() -> bool:
    """The lanes backward's IV32: CONFIG ``lanes_bwd_iv32`` where it applies (one state a loop
    step; compiled for a GPU, not triton's interpreter, which has no inline assembly): the state
    loop's counter kept 32-bit (``triton_lanes._opaque``)."""
    return CONFIG["lanes_bwd_iv32"] and _lanes_bwd_one_state() and fast_math()


def _lanes_shift(lanes_t: int, d_state: int) -> bool:
    """The lanes backward's SHIFT: CONFIG ``lanes_bwd_shift`` where the values are held
    (``_lanes_held``): the carries passed on collected by moving them up a lane a state."""
    return CONFIG["lanes_bwd_shift"] and _lanes_held(lanes_t, d_state)


def _lanes_bc_bits(b_dtype: torch.dtype, c_dtype: torch.dtype, length: int, lanes_t: int,
                   word_aligned: bool = True) -> bool:  # fmt: skip
    """The lanes backward's BITS: CONFIG ``lanes_bc_bits`` where B and C are bf16 and start at a
    whole int32 word (word_aligned), L is a multiple of 4 (every row starts at a whole word, and a
    lane's 4 steps lie before L or past it together) and a channel has fewer than 32 lanes: B and
    C are read as int32 words and unpacked with one shift or mask a value
    (``triton_lanes._load_k``)."""
    return (CONFIG["lanes_bc_bits"] and b_dtype == c_dtype == torch.bfloat16 and length % 4 == 0
            and lanes_t < 32 and word_aligned)  # fmt: skip


class _LaneKernels(NamedTuple):
    fwd: object
    bwd: object
    fp32_pair: object


@cache
def _lanes() -> _LaneKernels:
    """``triton_lanes``' kernels (imported on first use: that module builds on this one)."""
    from mamba_asr.ops.selective_scan import triton_lanes

    return _LaneKernels(triton_lanes._fwd_lanes_kernel, triton_lanes._bwd_lanes_kernel,
                        triton_lanes._fp32_pair_kernel)  # fmt: skip


def _fp32_pair(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C (contiguous, one half dtype) in fp32, in one buffer written by one kernel (two
    ``Tensor.float`` calls are two kernels and two dispatches); each as it is where it is fp32."""
    if B.dtype != C.dtype or B.dtype == torch.float32:
        return B.float(), C.float()
    nb, nc = B.numel(), C.numel()
    out = torch.empty(nb + nc, device=B.device, dtype=torch.float32)
    launch(_lanes().fp32_pair, (cdiv(nb + nc, 1024),), B, C, out, nb, nc, BLOCK=1024,
           num_warps=4)  # fmt: skip
    return out[:nb].view(B.shape), out[nb:].view(C.shape)


# CONFIG's time_bwd_prefetch -> the backward kernel's PREFETCH
_BWD_PREFETCH = {False: 0, "scalars": 1, True: 2}


def _block_d(dim: int, groups: int) -> int:
    """Channels per program: CONFIG's ``time_bd``, halved until it divides one group's channels."""
    bd = CONFIG["time_bd"]
    while (dim // groups) % bd:
        bd //= 2
    return bd


class TritonTimeScan(torch.autograd.Function):
    """(out, last) of the time-parallel kernels; arguments as ``TritonSelectiveScan``.

    The host issues one kernel a pass and as few other operations as it can (the host's time is
    what bounds short sequences): the kernels read the initial state and dLoss/d(last) where they
    are and write the last state, dA, dD and d(delta_bias) in place (atomically, in fp32, into
    one zeroed buffer with dB and dC), so there is no fill, copy or sum around them."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        x = scan_inputs(u, delta, A, B, C, D, z, delta_bias, h0, softplus)
        u, delta, A32, B, C, D32, z, bias32, h0 = x[:9]
        batch, dim, length, d_state, groups, round_gate = x[9:15]
        bd, lanes = _block_d(dim, groups), _lanes_k()
        Bk, Ck = B, C  # what the forward kernel reads; the backward reads B and C as given
        if lanes is not None and CONFIG["lanes_bc_fp32"] and B.dtype != torch.float32:
            Bk, Ck = _fp32_pair(B, C)  # converted once, not once a state in every program
        tc = CONFIG["time_chunk"] if lanes is None else 32 * lanes
        plan = None if lanes is not None else _seq_plan(u, d_state, dim // groups, tc)
        n_chunks = max(cdiv(length, tc if plan is None else plan.every), 1)
        n_ckpt = n_chunks
        if lanes is not None:  # the backward's chunks: lanes_t lanes of K steps
            lanes_t = _lanes_time(dim, groups)
            n_ckpt = max(cdiv(length, lanes_t * lanes), 1)
        out = torch.empty_like(u)
        save_y = z is not None and any(ctx.needs_input_grad)
        # the output before the gate, for dLoss/dz only: in u's dtype, as the peer keeps it (half
        # the bytes in bf16), unless CONFIG's time_y_fp32
        y_dtype = torch.float32 if CONFIG["time_y_fp32"] else u.dtype
        ypre = u.new_empty(u.shape, dtype=y_dtype) if save_y else None
        ckpt = u.new_empty(batch, dim, n_ckpt, d_state, dtype=torch.float32)
        last = u.new_empty(batch, dim, d_state, dtype=torch.float32)
        dummy = A32
        args = (u, delta, A32, Bk, Ck, D32 if D is not None else dummy, z if z is not None else u,
                bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy, out,
                ypre if save_y else dummy, ckpt, last, dim, length, groups)  # fmt: skip
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                     HAS_H0=h0 is not None, SOFTPLUS=softplus, ROUND_GATE=round_gate,
                     SAVE_Y=save_y, N=d_state, FAST=fast_math())  # fmt: skip
        if lanes is not None:  # K steps a lane: triton_lanes.py
            launch(_lanes().fwd, _grid(batch, cdiv(dim // groups, bd), groups), *args, n_chunks,
                   n_ckpt, **flags, BD=bd, K=lanes, CK=lanes_t, NU=_lanes_unroll(False),
                   PREFETCH=CONFIG["lanes_prefetch"] in (True, "fwd"),
                   BATCH_FAST=CONFIG["time_batch_fast"], num_warps=CONFIG["time_warps"],
                   num_stages=CONFIG["time_stages"],
                   maxnreg=CONFIG["lanes_fwd_maxnreg"],
                   HELD=_lanes_fwd_held(lanes_t, d_state),
                   WHOLE=CONFIG["lanes_fwd_whole"])  # fmt: skip
        elif plan is not None:  # one thread per (channel, state): gluon_seq.py
            warps, block = plan.fwd
            launch(fwd_seq_kernel, (batch, cdiv(dim // groups, block), groups), *args,
                   dim // groups, n_chunks, **flags, TC=plan.every, T=plan.steps, W=warps,
                   PREFETCH=CONFIG["seq_prefetch"], num_warps=warps)  # fmt: skip
        else:
            launch(
                _fwd_time_kernel, _grid(batch, cdiv(dim // groups, bd), groups), *args, n_chunks,
                **flags,
                TC=tc, BD=bd, NU=CONFIG["time_unroll"], PREFETCH=CONFIG["time_prefetch"],
                BATCH_FAST=CONFIG["time_batch_fast"], CARRY_IN=CONFIG["time_carry_in"],
                num_warps=CONFIG["time_warps"], num_stages=CONFIG["time_stages"],
            )  # fmt: skip
        ctx.bc = ((B.shape, B.dtype), (C.shape, C.dtype))  # the gradients' shapes and dtypes
        if CONFIG["lanes_bc_fp32"] == "both":  # the backward reads the fp32 copies too
            B, C = Bk, Ck
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, h0, ypre, ckpt)
        ctx.info = x.info
        ctx.seq = plan if plan is not None and plan.bwd is not None else None
        ctx.lanes = None if lanes is None else (lanes, lanes_t)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, h0, ypre, ckpt = ctx.saved_tensors
        softplus, round_gate, has_h0, A_dtype, D_dtype, bias_dtype, h0_dtype = ctx.info
        batch, dim, length = u.shape
        d_state, groups = A32.shape[1], 1 if B.dim() == 3 else B.shape[1]
        n_chunks = ckpt.shape[2]
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        bd, tc = _block_d(dim, groups), CONFIG["time_chunk"]
        # dB, dC, dA, dD, d(delta_bias): fp32, summed into by every program
        sizes = (B.numel(), C.numel(), dim * d_state, dim, dim)
        zeros = torch.zeros(sum(sizes), device=u.device, dtype=torch.float32)
        dB, dC, dA, dD, dbias = zeros.split_with_sizes(sizes)  # dB, dC first: one cast
        dummy = A32
        if ctx.seq is not None:  # gluon_seq.py's backward
            warps, block = ctx.seq.bwd
            dh0 = u.new_empty(batch, dim, d_state, dtype=torch.float32) if has_h0 else None
            launch(
                bwd_seq_kernel, (batch, cdiv(dim // groups, block), groups), u, delta, A32, B, C,
                D32 if D32 is not None else dummy, z if z is not None else u,
                bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy,
                ypre if ypre is not None else dummy, ckpt, dout,
                dlast if dlast is not None else dummy, du, ddelta, dz if dz is not None else du,
                dA, dD, dbias, dB, dC, dh0 if dh0 is not None else dummy, dim, length, groups,
                dim // groups, n_chunks, HAS_D=D32 is not None, HAS_Z=z is not None,
                HAS_BIAS=bias32 is not None, HAS_H0=has_h0, HAS_DLAST=dlast is not None,
                SOFTPLUS=softplus, ROUND_GATE=round_gate, N=d_state, T=ctx.seq.steps, W=warps,
                PREFETCH=CONFIG["seq_prefetch"], FAST=fast_math(), num_warps=warps,
                maxnreg=CONFIG["seq_bwd_maxnreg"],
            )  # fmt: skip
            dh0 = None if dh0 is None else dh0.to(h0_dtype)
            return _grads(ctx.info, A32, ctx.bc, du, ddelta, dA, zeros, dD, dz, dbias, dh0)
        dhbuf = u.new_empty(2, batch, dim, d_state, dtype=torch.float32)
        # the two time-parallel backwards' arguments (lanes' and time's); they differ in the rest
        args = (u, delta, A32, B, C, D32 if D32 is not None else dummy, z if z is not None else u,
                bias32 if bias32 is not None else dummy, h0 if h0 is not None else dummy,
                ypre if ypre is not None else dummy, ckpt, dout,
                dlast if dlast is not None else dummy, dhbuf, du, ddelta,
                dz if dz is not None else du, dA, dD, dbias, dB, dC, dim, length, groups,
                n_chunks)  # fmt: skip
        flags = dict(HAS_D=D32 is not None, HAS_Z=z is not None, HAS_BIAS=bias32 is not None,
                     HAS_H0=h0 is not None, HAS_DLAST=dlast is not None, SOFTPLUS=softplus,
                     ROUND_GATE=round_gate, N=d_state, BD=bd, FAST=fast_math(),
                     BATCH_FAST=CONFIG["time_batch_fast"], num_warps=CONFIG["time_warps"],
                     num_stages=CONFIG["time_stages"],
                     maxnreg=CONFIG["time_bwd_maxnreg"])  # fmt: skip
        grid = _grid(batch, cdiv(dim // groups, bd), groups)
        if ctx.lanes is not None:  # triton_lanes.py: its carries are a_t dLoss/dh_t
            k, lanes_t = ctx.lanes  # the forward's checkpoints: chunks of lanes_t K steps
            bd = _lanes_bwd_block(bd, lanes_t)
            flags.update(BD=bd, maxnreg=CONFIG["lanes_bwd_maxnreg"])
            if lanes_t < 32:  # one warp holds the program's channels
                flags["num_warps"] = 1
            launch(_lanes().bwd, _grid(batch, cdiv(dim // groups, bd), groups), *args, **flags,
                   K=k, TL=lanes_t, NU=_lanes_unroll(True), PREFETCH=_lanes_bwd_prefetch(),
                   WHOLE=CONFIG["lanes_bwd_whole"], DA_LOG=_lanes_da_log(lanes_t, d_state),
                   HELD=_lanes_held(lanes_t, d_state), IV32=_lanes_iv32(),
                   SHIFT=_lanes_shift(lanes_t, d_state),
                   BITS=_lanes_bc_bits(B.dtype, C.dtype, length, lanes_t,
                                       B.data_ptr() % 4 == 0 and C.data_ptr() % 4 == 0))  # fmt: skip
            dh0 = dhbuf[n_chunks % 2].to(h0_dtype) if has_h0 else None
            return _grads(ctx.info, A32, ctx.bc, du, ddelta, dA, zeros, dD, dz, dbias, dh0)
        launch(_bwd_time_kernel, grid, *args, **flags, TC=tc, NU=CONFIG["time_unroll"],
               PREFETCH=_BWD_PREFETCH[CONFIG["time_bwd_prefetch"]],
               CARRY_IN=CONFIG["time_carry_in"])  # fmt: skip
        dh0 = None
        if has_h0:  # dLoss/dh_{-1} = a_0 dLoss/dh_0
            pre0 = delta[:, :, 0].float() + (0.0 if bias32 is None else bias32)
            dt0 = F.softplus(pre0) if softplus else pre0
            dh0 = (torch.exp(dt0[..., None] * A32) * dhbuf[n_chunks % 2]).to(h0_dtype)
        return _grads(ctx.info, A32, ctx.bc, du, ddelta, dA, zeros, dD, dz, dbias, dh0)


def _grads(info, A32, bc, du, ddelta, dA, zeros, dD, dz, dbias, dh0) -> tuple:
    """The backward's results in the inputs' shapes and dtypes (dA, dB, dC, dD and
    d(delta_bias) were summed in fp32, dB and dC the first elements of zeros, one after the
    other; info: ``ScanInputs.info``; bc: B's and C's (shape, dtype); dD and dbias None where the
    call had no D or delta_bias)."""
    _softplus, _round, _has_h0, A_dtype, D_dtype, bias_dtype, _h0_dtype = info
    (b_shape, b_dtype), (c_shape, c_dtype) = bc
    nb, nc = b_shape.numel(), c_shape.numel()
    if b_dtype == c_dtype:  # one cast for both
        dB, dC = _as(zeros[: nb + nc], b_dtype).split_with_sizes((nb, nc))
    else:
        dB, dC = _as(zeros[:nb], b_dtype), _as(zeros[nb : nb + nc], c_dtype)
    return (
        du,
        ddelta,
        _as(dA.view(A32.shape), A_dtype),
        dB.view(b_shape),
        dC.view(c_shape),
        None if D_dtype is None else _as(dD, D_dtype),
        dz,
        None if bias_dtype is None else _as(dbias, bias_dtype),
        dh0,
        None,
    )


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; t itself where it already is (``Tensor.to`` returns it too, after a dispatch
    that costs the host about a microsecond)."""
    return t if t.dtype == dtype else t.to(dtype)
