"""Selective scan on CUDA with Triton: one fused kernel forward, one backward.

Layouts, chosen by ``CONFIG["kernel"]``: ``"lanes"`` (the default; ``triton_lanes.py``: a chunk's
steps over a warp's lanes, K consecutive steps a lane scanned in the thread, the states one after
another), ``"time"`` (``triton_time.py``: the same layout, each chunk through
``tl.associative_scan``; its host code runs both), ``"seq"`` (``gluon_seq.py``) and ``"state"``,
described here.

One program owns (batch b, a block of BD channels) and walks the sequence in chunks of T steps, with
the chunk's time steps held inside each thread and the (state, channel) pairs spread over the lanes,
so the recurrence h_t = a_t h_{t-1} + x_t runs in registers without shuffles. The elementwise parts
are fused in: dt = softplus(delta + delta_bias), the D skip and the z gate, so each input is read once
in its own dtype (fp32, fp16 or bf16) and the output written once. Arithmetic is fp32 throughout; the
gate silu(z) is rounded to z's dtype as PyTorch rounds ``y * F.silu(z)`` (``CONFIG["round_gate"]``).

The forward scans each chunk with ``tl.associative_scan`` along the in-thread time axis and stores the
state every S chunks (a checkpoint every T*S steps). The backward walks the checkpoints backwards:
it first re-runs the forward over the S chunks of one checkpoint, keeping each chunk's start state in
a small per-program scratch buffer, then processes those chunks last to first with the time steps
unrolled (the adjoint dh_t = a_{t+1} dh_{t+1} + dLoss/dh_t needs the next step's decay, which the
unrolled loop keeps from the step before). Where batch x channel blocks are too few to fill the GPU,
the sequence is also cut into segments of whole checkpoints that run in parallel: a first pass
gives each segment's linear effect on the adjoint carried through it (from dt, dLoss/dy and C), and
each segment folds the later ones' effects into its starting carry. dA, dD and d(delta_bias) are
summed in fp32 registers per program over its steps, then over programs with ``torch.sum``; dB and
dC (shared by the channels of a group) are reduced over the program's channels first and then added
atomically, one add per program and element.

Shape key: B batch, D channels, G groups of B/C (E = D / G channels each), L length, N state.
This module imports triton; ``dispatch`` imports it only when triton is installed.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# Launch settings (benchmarks/scan_cuda.py sweeps them): channels per program, forward and backward
# steps per chunk, chunks per checkpoint, warps; round_gate: silu(z) rounded to z's dtype;
# kernel: "time" (triton_time.py; its settings time_*: channels, steps and warps a program, states
# a loop step, loads issued a step ahead in the forward / backward ("scalars": A and the carried
# states only), the backward's register cap, the carried state folded into a chunk's first step)
# or "state" (this module's), or "seq": gluon_seq.py's forward and backward (one thread per
# (channel, state), seq_chunk steps in registers, seq_fwd_warps a forward program (None: the most
# of 4, 2, 1 whose channels divide a group's), seq_bwd_warps a backward program, its register cap
# seq_bwd_maxnreg, seq_prefetch: 1, a chunk's (channel, step) tiles loaded a chunk ahead, 2, its B
# and C too, 0, none; CUDA only;
# elsewhere, and where they do not apply, the time kernels run), or "lanes" (the default):
# triton_lanes.py (the time kernels' layout with lanes_k = 4 or 8 consecutive steps a lane scanned
# in the thread; lanes_unroll states a loop step, one number for both kernels or [forward,
# backward]; time_bd, time_warps and time_batch_fast as theirs; lanes_prefetch: the next states'
# loads a loop step ahead in "fwd", "bwd", both (True) or neither (False); lanes_bc_fp32: the
# forward reads half B and C cast to fp32 once before it, so that no state converts them again
# (the backward reads them as given: L2 traffic bounds it, and fp32 doubles theirs; "both": the
# backward reads the fp32 copies too, which timed the same on an H100);
# lanes_bwd_pingpong: the backward takes two states a loop step, each one's loads issued while the
# other computes, so no loaded value is copied between loop steps (its unroll and prefetch then do
# not apply; 12% fewer instructions a state for 10-15 more registers on sm_90; timed on an H100,
# 1-7% faster in fp32 and about 1% slower in bf16 with one channel a warp, slower at both with
# two, where its cap spills 8-16 bytes));
# lanes_time: lanes along time in a lanes backward program (32, 16 or 8; its warp's other lanes
# hold 32 / lanes_time channels, so that every B and C value a warp loads, and every dB and dC
# add, serves that many channels, over chunks of lanes_time K steps; the forward keeps 32 lanes
# and one channel a program and checkpoints the state at the backward's chunks);
# lanes_bwd_maxnreg: the lanes backward's register cap (time_bwd_maxnreg is the time kernels');
# lanes_bwd_whole: chunks wholly before L take a copy of the backward's state loop with no mask
# along time (7 fewer instructions a state on sm_90; alone within 1.2% of the defaults of then on
# an H100, with the three below 1-2% faster in bf16 at L 512 and 2048). Timed on an H100 and taken
# out again as slower (GPU time of a forward+backward): no mask a state, the loads ahead of the
# last reading state N - 1 again (1-9% more); dA's terms kept per lane over the chunks and summed
# once (7 fewer instructions a state; within 1%, 3-4% more at L 8192); the forward with 8 steps a
# lane (25% fewer instructions a state; 3-18% more);
# lanes_fwd_maxnreg: the lanes forward's register cap: 64 keeps the fp32 forward without a
# backward (68 registers uncapped, 64 and 8 bytes of stack capped) at 32 programs an SM; on an
# H100 that forward took 28-35% less time at L 2048 and 8192 and 7% less at 512, the rest within
# 1% or faster;
# lanes_da_merge: the lanes backward's dA terms of each group of lanes_time states merged pairwise
# across the lanes as the states come, then added once a lane (15 shuffles and one atomic add for
# 16 states, against 64 and 16; one state a loop step, N a multiple of lanes_time);
# lanes_bwd_held: where N = lanes_time, the lanes backward's lanes hold one state each of A, the
# entering state and the adjoint's carry, loaded once a chunk and taken by a shuffle a state (three
# loads a state before, each with its address and mask), and store the carries passed on once a
# chunk (one state a loop step);
# lanes_bc_bits: the lanes backward reads bf16 B and C as int32 words and unpacks each value with
# one shift or mask (a conversion takes a byte move and a shift; L a multiple of 4,
# lanes_time < 32). Each of these three alone moved the GPU time by less than 2% (on an H100),
# dA merged with the values held took 6-7% off the bf16 backward kernel at L 512 and 2048, and
# with whole chunks and bits 9-10% (forward+backward, peer/ours: 1.48x / 1.62x / 1.59x in bf16,
# 2.08x / 2.00x / 1.87x in fp32, against 1.38x / 1.52x / 1.57x and 2.00x / 1.90x / 1.83x; the
# default since then);
# lanes_bwd_iv32: the lanes backward's state loop counter kept 32-bit (LLVM widens it to 64:
# a 64-bit add, compares and copies a state; one state a loop step, compiled for a GPU);
# lanes_bwd_shift: with the values held, the carries passed on move up a lane a state, lane 0
# taking the new one, rather than lane n taking state n's (no compare with n a state). The two
# take the bf16 backward's state loop from 181 to 172 instructions a state on sm_90 (fp32: 183 to
# 174); on an H200 they took 2-3% off the backward kernel (bf16 L 512: 0.159 ms against 0.163;
# forward+backward, peer/ours: 1.51x / 1.61x / 1.60x in bf16, 2.29x / 2.10x / 2.02x in fp32,
# against 1.49x / 1.58x / 1.58x and 2.26x / 2.07x / 1.99x; the default since then);
# lanes_fwd_held: the lanes forward holds A and the states entering a chunk in its lanes (one
# shuffle each a state, rather than two loads), collects the states leaving each backward chunk
# there and stores them once a chunk (rather than a store a state; N <= lanes_time);
# lanes_fwd_whole: chunks wholly before L take a copy of the forward's state loop with no mask
# along time (with lanes_fwd_held, none of states either: B and C read unmasked). The two take the
# bf16 forward's loop for 4 states from 308 to 279 instructions on sm_90; on an H100 they took
# 6-7% off the bf16 forward kernel and 2-3% off the fp32 one (forward+backward, peer/ours:
# 1.53x / 1.68x / 1.64x in bf16, 2.13x / 2.03x / 1.84x in fp32, against 1.51x / 1.65x / 1.62x and
# 2.10x / 2.01x / 1.84x; the default since then). Taken out again: the backward's fp32 sums
# zeroed by the forward's cast of B and C (one launch fewer, but the backward's atomics then find
# those lines cold: its kernel 0.3-2% slower in bf16);
# time_fwd: "seq" for gluon_seq's forward before the time kernels' backward
CONFIG = {"block_d": 8, "chunk": 8, "bwd_chunk": 8, "ckpt_chunks": 4, "fwd_warps": 1,
          "bwd_warps": 1, "fwd_stages": 3, "bwd_stages": 3, "bwd_maxnreg": None,
          "bwd_programs": 2048, "round_gate": True,
          "kernel": "lanes", "time_bd": 1, "time_chunk": 128, "time_warps": 1, "time_stages": 2,
          "time_unroll": 2, "time_prefetch": True, "time_bwd_prefetch": False,
          "time_bwd_maxnreg": None, "time_batch_fast": True, "time_carry_in": False,
          "time_y_fp32": False, "time_fwd": "time", "seq_chunk": 16, "seq_fwd_warps": None,
          "seq_bwd_warps": 1, "seq_bwd_maxnreg": None, "seq_prefetch": 1, "lanes_k": 4,
          "lanes_unroll": [4, 1], "lanes_prefetch": "bwd", "lanes_bc_fp32": True,
          "lanes_bwd_pingpong": False, "lanes_time": 16, "lanes_bwd_maxnreg": 128,
          "lanes_bwd_whole": True, "lanes_fwd_maxnreg": 64,
          "lanes_da_merge": True, "lanes_bwd_held": True, "lanes_bc_bits": True,
          "lanes_bwd_iv32": True, "lanes_bwd_shift": True, "lanes_fwd_held": True,
          "lanes_fwd_whole": True}  # fmt: skip
# bwd_programs: when batch x channel blocks fill less than half of this many programs, the backward
# also splits the sequence into segments (whole checkpoints) that run in parallel, after a pass
# over dt, dLoss/dy and C that gives each segment's effect on the adjoint state passed into it
# (on an H200 that pass paid off at B4 L8192, 512 blocks: 1.35x; at 1024 blocks it cost 5-10%)

# MAMBA_ASR_TRITON_SCAN_CONFIG='{"kernel": "time", ...}' overrides entries for a whole process
_env_config = os.environ.get("MAMBA_ASR_TRITON_SCAN_CONFIG")
if _env_config:
    _unknown = set(json.loads(_env_config)) - set(CONFIG)
    if _unknown:
        raise ValueError(
            f"MAMBA_ASR_TRITON_SCAN_CONFIG: unknown keys {sorted(_unknown)}; "
            f"known: {sorted(CONFIG)}"
        )
    CONFIG.update(json.loads(_env_config))

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def softplus(x, FAST: tl.constexpr):
    """log(1 + e^x); FAST: with the GPU's approximate exp2/log2 (about 20 instructions fewer than
    the exact log), relative error under 1e-5, the series e - e^2/2 + e^3/3 - e^4/4 below x = -4."""
    if FAST:
        e = tl.math.exp2(x * LOG2E)
        lg = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [1.0 + e],
                                       dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        small = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - 0.25 * e)))
        return tl.where(x > 20.0, x, tl.where(x < -4.0, small, lg * 0.6931471805599453))
    else:
        return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _cols(x, T: tl.constexpr):
    """The T columns of an (M, T) tile, as a tuple of (M,) tensors."""
    if T == 1:
        return (tl.reshape(x, (x.shape[0],)),)
    elif T == 2:
        c0, c1 = tl.split(x)
        return (c0, c1)
    elif T == 4:
        lo, hi = tl.split(tl.reshape(x, (x.shape[0], 2, 2)))
        c0, c2 = tl.split(lo)
        c1, c3 = tl.split(hi)
        return (c0, c1, c2, c3)
    else:
        tl.static_assert(T == 8, "backward chunk must be 1, 2, 4 or 8 steps")
        ev, od = tl.split(tl.reshape(x, (x.shape[0], 4, 2)))
        ee, eo = tl.split(tl.reshape(ev, (x.shape[0], 2, 2)))
        oe, oo = tl.split(tl.reshape(od, (x.shape[0], 2, 2)))
        c0, c4 = tl.split(ee)
        c2, c6 = tl.split(eo)
        c1, c5 = tl.split(oe)
        c3, c7 = tl.split(oo)
        return (c0, c1, c2, c3, c4, c5, c6, c7)


@triton.jit
def _rows(cs, T: tl.constexpr):
    """Inverse of ``_cols``: T (M,) tensors as the columns of an (M, T) tile."""
    m: tl.constexpr = cs[0].shape[0]
    if T == 1:
        return tl.reshape(cs[0], (m, 1))
    elif T == 2:
        return tl.join(cs[0], cs[1])
    elif T == 4:
        return tl.reshape(tl.join(tl.join(cs[0], cs[2]), tl.join(cs[1], cs[3])), (m, 4))
    else:
        ev = tl.reshape(tl.join(tl.join(cs[0], cs[4]), tl.join(cs[2], cs[6])), (m, 4))
        od = tl.reshape(tl.join(tl.join(cs[1], cs[5]), tl.join(cs[3], cs[7])), (m, 4))
        return tl.reshape(tl.join(ev, od), (m, 8))


@triton.jit
def chunk_dt(u_ptr, delta_ptr, offs, mask, bias, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """u, delta + delta_bias and dt of a (channels, steps) tile in fp32; dt = 0 where masked
    (steps past L: a = 1, x = 0)."""
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
    dt = softplus(pre, FAST) if SOFTPLUS else pre
    return u, pre, tl.where(mask, dt, 0.0)


@triton.jit
def gate(zt, ROUND: tl.constexpr, dtype: tl.constexpr):
    """silu(z) and sigmoid(z) in fp32; silu rounded to ``dtype`` when ROUND (as PyTorch's F.silu)."""
    sg = tl.sigmoid(zt)
    silu = zt * sg
    if ROUND:
        silu = silu.to(dtype).to(tl.float32)
    return silu, sg


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                out_ptr, ckpt_ptr, last_ptr, D, L, N, E, G, n_ckpt,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, ROUND_GATE: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr, S: tl.constexpr,
                FAST: tl.constexpr):  # fmt: skip
    # tiles are (T, BN, BD): time inside each thread, channels then states over the lanes
    b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n, offs_t = tl.arange(0, BN), tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    rows = b * D + offs_d  # (BD,) rows of (B, D, .)
    bc0 = (b * G + (pid_d * BD) // E) * N * L  # this block's group of B/C (BD divides E)
    m_nd = mn[:, None] & md[None, :]
    state_off = offs_n[:, None] + rows[None, :] * N  # (BN, BD)
    A2 = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=m_nd, other=0.0) * LOG2E
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0) if HAS_D else tl.zeros((BD,), tl.float32)
    bias = (
        tl.load(bias_ptr + offs_d, mask=md, other=0.0) if HAS_BIAS else tl.zeros((BD,), tl.float32)
    )
    h = (
        tl.load(h0_ptr + state_off, mask=m_nd, other=0.0)
        if HAS_H0
        else tl.zeros((BN, BD), tl.float32)
    )
    for k in range(n_ckpt):
        tl.store(ckpt_ptr + (rows[None, :] * n_ckpt + k) * N + offs_n[:, None], h, mask=m_nd)
        for s in range(S):
            t = (k * S + s) * T + offs_t
            mt = t < L
            m_td = mt[:, None] & md[None, :]
            m_tn = mt[:, None] & mn[None, :]
            offs_td = t[:, None] + rows[None, :] * L
            offs_tn = bc0 + t[:, None] + offs_n[None, :] * L
            u = tl.load(u_ptr + offs_td, mask=m_td, other=0.0).to(tl.float32)
            pre = tl.load(delta_ptr + offs_td, mask=m_td, other=0.0).to(tl.float32) + bias[None, :]
            dt = softplus(pre, FAST) if SOFTPLUS else pre
            dt = tl.where(m_td, dt, 0.0)  # steps past L: a = 1, x = 0
            Bt = tl.load(B_ptr + offs_tn, mask=m_tn, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + offs_tn, mask=m_tn, other=0.0).to(tl.float32)
            a = tl.math.exp2(dt[:, None, :] * A2[None, :, :])
            x = (dt * u)[:, None, :] * Bt[:, :, None]
            a_cum, h_loc = tl.associative_scan((a, x), 0, combine)
            hs = a_cum * h[None, :, :] + h_loc  # h_t, (T, BN, BD)
            y = tl.sum(hs * Ct[:, :, None], axis=1) + Dv[None, :] * u  # (T, BD)
            if HAS_Z:
                zt = tl.load(z_ptr + offs_td, mask=m_td, other=0.0).to(tl.float32)
                silu, _sg = gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
                y = y * silu
            tl.store(out_ptr + offs_td, y, mask=m_td)
            h = tl.sum(tl.where((offs_t == T - 1)[:, None, None], hs, 0.0), axis=0)
    tl.store(last_ptr + state_off, h, mask=m_nd)


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                scratch_ptr, dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr,
                dbias_ptr, dB_ptr, dC_ptr, dh0_ptr, carry_ptr, D, L, N, E, G, n_ckpt, ck_per_seg,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr,
                ROUND_GATE: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr,
                S: tl.constexpr, SPLIT: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    # state tiles (BN, BD); a chunk's T steps unrolled; S chunks per checkpoint; program_id(2):
    # the segment of checkpoints (SPLIT: more than one; dA, dD, dbias are then per segment)
    b, pid_d, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_seg = tl.num_programs(2)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n, offs_t = tl.arange(0, BN), tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    rows = b * D + offs_d
    bc0 = (b * G + (pid_d * BD) // E) * N * L
    m_nd = mn[:, None] & md[None, :]
    state_off = offs_n[:, None] + rows[None, :] * N
    # this program's S chunk-start states: (S, BN, BD) in the scratch buffer
    scratch = (scratch_ptr + ((p * tl.num_programs(0) + b) * tl.num_programs(1) + pid_d) * (S * BN * BD)
               + offs_n[:, None] * BD + tl.arange(0, BD)[None, :])  # fmt: skip
    A = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=m_nd, other=0.0)
    A2 = A * LOG2E
    Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0) if HAS_D else tl.zeros((BD,), tl.float32)
    bias = (
        tl.load(bias_ptr + offs_d, mask=md, other=0.0) if HAS_BIAS else tl.zeros((BD,), tl.float32)
    )
    # dh: dLoss/dh_t of the step being processed; a_next: the decay of the step after it
    dh = (
        tl.load(dlast_ptr + state_off, mask=m_nd, other=0.0)
        if HAS_DLAST
        else tl.zeros((BN, BD), tl.float32)
    )
    if SPLIT:  # the carry into this segment: through the later segments' maps, last first
        seg_stride = 2 * tl.num_programs(0) * D * N
        for qq in range(n_seg - 1 - p):
            q = n_seg - 1 - qq
            mq = tl.load(carry_ptr + q * seg_stride + state_off, mask=m_nd, other=0.0)
            vq = tl.load(carry_ptr + q * seg_stride + tl.num_programs(0) * D * N + state_off,
                         mask=m_nd, other=0.0)  # fmt: skip
            dh = mq * dh + vq
    a_next = tl.full((BN, BD), 1.0, tl.float32)
    dA = tl.zeros((BN, BD), tl.float32)
    dD = tl.zeros((BD,), tl.float32)
    dbias = tl.zeros((BD,), tl.float32)
    k_lo = p * ck_per_seg
    for kk in range(tl.minimum(ck_per_seg, n_ckpt - k_lo)):
        k = tl.minimum(k_lo + ck_per_seg, n_ckpt) - 1 - kk
        h = tl.load(
            ckpt_ptr + (rows[None, :] * n_ckpt + k) * N + offs_n[:, None], mask=m_nd, other=0.0
        )
        if S > 1:  # the start state of each chunk of this checkpoint, into the scratch buffer
            for s in range(S - 1):
                tl.store(scratch + s * (BN * BD), h)
                t = (k * S + s) * T + offs_t
                m_dt = md[:, None] & (t < L)[None, :]
                offs_dt = rows[:, None] * L + t[None, :]
                u, _pre, dt = chunk_dt(u_ptr, delta_ptr, offs_dt, m_dt, bias, SOFTPLUS, FAST)
                m_nt = mn[:, None] & (t < L)[None, :]
                Bt = tl.load(B_ptr + bc0 + offs_n[:, None] * L + t[None, :], mask=m_nt, other=0.0)
                dts = _cols(dt, T)
                dtus = _cols(dt * u, T)
                bs = _cols(Bt.to(tl.float32), T)
                for j in tl.static_range(T):
                    h = tl.math.exp2(dts[j][None, :] * A2) * h + dtus[j][None, :] * bs[j][:, None]
            tl.store(scratch + (S - 1) * (BN * BD), h)
            tl.debug_barrier()
        for ss in range(S):
            s = S - 1 - ss
            if S > 1:
                h = tl.load(scratch + s * (BN * BD))
            t = (k * S + s) * T + offs_t
            mt = t < L
            m_dt = md[:, None] & mt[None, :]
            m_nt = mn[:, None] & mt[None, :]
            offs_dt = rows[:, None] * L + t[None, :]
            offs_nt = bc0 + offs_n[:, None] * L + t[None, :]
            u, pre, dt = chunk_dt(u_ptr, delta_ptr, offs_dt, m_dt, bias, SOFTPLUS, FAST)
            dtu = dt * u
            Bt = tl.load(B_ptr + offs_nt, mask=m_nt, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + offs_nt, mask=m_nt, other=0.0).to(tl.float32)
            g = tl.load(dout_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)  # dLoss/dout
            dts = _cols(dt, T)
            dtus = _cols(dtu, T)
            bs = _cols(Bt, T)
            cs = _cols(Ct, T)
            hs = ()  # h_t after each step
            for j in tl.static_range(T):
                h = tl.math.exp2(dts[j][None, :] * A2) * h + dtus[j][None, :] * bs[j][:, None]
                hs = hs + (h,)
            if HAS_Z:
                ys = ()
                for j in tl.static_range(T):
                    ys = ys + (tl.sum(hs[j] * cs[j][:, None], axis=0),)
                y = _rows(ys, T) + Dv[:, None] * u
                zt = tl.load(z_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
                silu, sg = gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
                tl.store(dz_ptr + offs_dt, g * y * sg * (1.0 + zt * (1.0 - sg)), mask=m_dt)
                g = g * silu  # dLoss/dy
            dD += tl.sum(g * u, axis=1)
            gs = _cols(g, T)
            sas = ()  # per step: sum_n dLoss/d(dt A) A
            sbs = ()  # per step: sum_n dh B
            dbs = ()
            dcs = ()
            for j in tl.static_range(T - 1, -1, -1):
                a = tl.math.exp2(dts[j][None, :] * A2)
                dh = a_next * dh + gs[j][None, :] * cs[j][:, None]
                a_next = a
                dlog = dh * (hs[j] - dtus[j][None, :] * bs[j][:, None])  # a_t h_{t-1} = h_t - x_t
                dA += dlog * dts[j][None, :]
                sas = (tl.sum(dlog * A, axis=0),) + sas
                sbs = (tl.sum(dh * bs[j][:, None], axis=0),) + sbs
                dbs = (tl.sum(dh * dtus[j][None, :], axis=1),) + dbs
                dcs = (tl.sum(hs[j] * gs[j][None, :], axis=1),) + dcs
            s_b = _rows(sbs, T)
            ddt = _rows(sas, T) + s_b * u
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(pre)
            ddt = tl.where(m_dt, ddt, 0.0)
            dbias += tl.sum(ddt, axis=1)
            tl.store(ddelta_ptr + offs_dt, ddt, mask=m_dt)
            tl.store(du_ptr + offs_dt, s_b * dt + g * Dv[:, None], mask=m_dt)
            tl.atomic_add(dB_ptr + offs_nt, _rows(dbs, T), mask=m_nt)
            tl.atomic_add(dC_ptr + offs_nt, _rows(dcs, T), mask=m_nt)
        if S > 1:
            tl.debug_barrier()  # the scratch buffer is rewritten by the next checkpoint
    part = p * tl.num_programs(0) * D  # dA, dD, dbias: (segments, B, D[, N])
    tl.store(dA_ptr + part * N + state_off, dA, mask=m_nd)
    tl.store(dD_ptr + part + rows, dD, mask=md)
    tl.store(dbias_ptr + part + rows, dbias, mask=md)
    if HAS_H0:
        tl.store(dh0_ptr + state_off, a_next * dh, mask=m_nd & (p == 0))


@triton.jit
def _bwd_carry_kernel(delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, carry_ptr,
                      D, L, N, E, G, n_ckpt, ck_per_seg,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                      ROUND_GATE: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                      T: tl.constexpr, S: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """Per segment p (checkpoints [p K, (p+1) K)): the map w -> M w + v from the adjoint carry
    passed into its last step (w = a_{t+1} dh_{t+1} after it) to the one it passes on
    (a_first dh_first), as M = prod_t a_t = exp(A sum_t dt) and v = sum_t exp(A sum_{r<=t} dt_r)
    dLoss/dy_t C_t (B and the states are not needed). carry: (P, 2, B, D, N) fp32."""
    b, pid_d, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n, offs_t = tl.arange(0, BN), tl.arange(0, T)
    md, mn = offs_d < D, offs_n < N
    rows = b * D + offs_d
    bc0 = (b * G + (pid_d * BD) // E) * N * L
    m_nd = mn[:, None] & md[None, :]
    A2 = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=m_nd, other=0.0) * LOG2E
    bias = (
        tl.load(bias_ptr + offs_d, mask=md, other=0.0) if HAS_BIAS else tl.zeros((BD,), tl.float32)
    )
    cum = tl.zeros((BD,), tl.float32)  # sum of dt from the segment's first step
    v = tl.zeros((BN, BD), tl.float32)
    for c in range(p * ck_per_seg * S, tl.minimum((p + 1) * ck_per_seg, n_ckpt) * S):
        t = c * T + offs_t
        mt = t < L
        m_dt = md[:, None] & mt[None, :]
        offs_dt = rows[:, None] * L + t[None, :]
        pre = tl.load(delta_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32) + bias[:, None]
        dt = softplus(pre, FAST) if SOFTPLUS else pre
        dt = tl.where(m_dt, dt, 0.0)
        g = tl.load(dout_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptr + offs_dt, mask=m_dt, other=0.0).to(tl.float32)
            silu, _sg = gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
            g = g * silu
        Ct = tl.load(C_ptr + bc0 + offs_n[:, None] * L + t[None, :], mask=mn[:, None] & mt[None, :],
                     other=0.0).to(tl.float32)  # fmt: skip
        dts = _cols(dt, T)
        gs = _cols(g, T)
        cs = _cols(Ct, T)
        for j in tl.static_range(T):
            cum += dts[j]
            v += tl.math.exp2(cum[None, :] * A2) * (gs[j][None, :] * cs[j][:, None])
    base = carry_ptr + p * (2 * tl.num_programs(0) * D * N) + offs_n[:, None] + rows[None, :] * N
    tl.store(base, tl.math.exp2(cum[None, :] * A2), mask=m_nd)
    tl.store(base + tl.num_programs(0) * D * N, v, mask=m_nd)


def _block_d(dim: int, groups: int) -> int:
    """Channels per program: CONFIG's, halved until it divides the channels of one group."""
    bd = CONFIG["block_d"]
    while (dim // groups) % bd:
        bd //= 2
    return bd


@cache
def fast_math() -> bool:
    """Approximate GPU math in the kernels (not in triton's CPU interpreter, which triton chooses
    once, at import: so is this, rather than an environment lookup on every call)."""
    return os.environ.get("TRITON_INTERPRET") != "1"


def contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class ScanInputs(NamedTuple):
    """The inputs as both layouts' kernels read them: u, delta, B, C, z contiguous in their own
    dtype; A, D, delta_bias, the initial state contiguous fp32; the shapes; ``info``, what the
    backward needs to return gradients in the inputs' dtypes."""

    u: Tensor
    delta: Tensor
    A32: Tensor
    B: Tensor
    C: Tensor
    D32: Tensor | None
    z: Tensor | None
    bias32: Tensor | None
    h032: Tensor | None
    batch: int
    dim: int
    length: int
    d_state: int
    groups: int
    round_gate: bool
    info: tuple


def scan_inputs(u, delta, A, B, C, D, z, delta_bias, h0, softplus) -> ScanInputs:
    def f32(t):  # as it is where it already is fp32 and contiguous (most calls: no op to dispatch)
        if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
            return t
        return t.float().contiguous()

    round_gate = bool(CONFIG["round_gate"]) and z is not None and z.dtype != torch.float32
    info = (softplus, round_gate, h0 is not None, A.dtype, None if D is None else D.dtype,
            None if delta_bias is None else delta_bias.dtype, None if h0 is None else h0.dtype)  # fmt: skip
    batch, dim, length = u.shape
    return ScanInputs(
        contiguous(u), contiguous(delta), f32(A), contiguous(B), contiguous(C), f32(D),
        contiguous(z), f32(delta_bias), f32(h0), batch, dim, length, A.shape[1],
        1 if B.dim() == 3 else B.shape[1], round_gate, info,
    )  # fmt: skip


def _steps() -> tuple[int, int, int]:
    """(forward chunk, backward chunk, steps per checkpoint)."""
    ck = CONFIG["chunk"] * CONFIG["ckpt_chunks"]
    if ck % CONFIG["bwd_chunk"]:
        raise ValueError(
            f"bwd_chunk {CONFIG['bwd_chunk']} must divide the checkpoint interval {ck}"
        )
    return CONFIG["chunk"], CONFIG["bwd_chunk"], ck


class TritonSelectiveScan(torch.autograd.Function):
    """(out, last) of the fused kernels; see ``selective_scan_triton``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        x = scan_inputs(u, delta, A, B, C, D, z, delta_bias, h0, softplus)
        u, delta, A32, B, C, D32, z, bias32, h032 = x[:9]
        batch, dim, length, d_state, groups, round_gate = x[9:15]
        bd = _block_d(dim, groups)
        chunk, _bwd_chunk, every = _steps()
        n_ckpt = max(triton.cdiv(length, every), 1)
        out = torch.empty_like(u)
        ckpt = u.new_empty(batch, dim, n_ckpt, d_state, dtype=torch.float32)
        last = u.new_empty(batch, dim, d_state, dtype=torch.float32)
        dummy = A32
        common = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                      SOFTPLUS=softplus, HAS_H0=h0 is not None, BD=bd,
                      BN=triton.next_power_of_2(d_state), T=chunk, num_warps=CONFIG["fwd_warps"])  # fmt: skip
        args = (u, delta, A32, B, C, D32 if D is not None else dummy, z if z is not None else u,
                bias32 if bias32 is not None else dummy, h032 if h0 is not None else dummy,
                out, ckpt, last, dim, length, d_state, dim // groups, groups, n_ckpt)  # fmt: skip
        _fwd_kernel[(batch, triton.cdiv(dim, bd))](
            *args, ROUND_GATE=round_gate, S=every // chunk, FAST=fast_math(),
            num_stages=CONFIG["fwd_stages"], **common,
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, ckpt)
        ctx.info = x.info
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A32, B, C, D32, z, bias32, ckpt = ctx.saved_tensors
        softplus, round_gate, has_h0, A_dtype, D_dtype, bias_dtype, h0_dtype = ctx.info
        batch, dim, length = u.shape
        d_state, groups = A32.shape[1], 1 if B.dim() == 3 else B.shape[1]
        dout = dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        bd = _block_d(dim, groups)
        n_ckpt = ckpt.shape[2]
        blocks = batch * triton.cdiv(dim, bd)
        per_seg = n_ckpt  # checkpoints per segment of the sequence
        if 2 * blocks < CONFIG["bwd_programs"]:
            per_seg = triton.cdiv(n_ckpt, min(n_ckpt, triton.cdiv(CONFIG["bwd_programs"], blocks)))
        segs = triton.cdiv(n_ckpt, per_seg)
        dA = u.new_empty(segs, batch, dim, d_state, dtype=torch.float32)
        dD = u.new_empty(segs, batch, dim, dtype=torch.float32)
        dbias = torch.empty_like(dD)
        dB = torch.zeros(B.shape, device=B.device, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=C.device, dtype=torch.float32)
        dh0 = u.new_empty(batch, dim, d_state, dtype=torch.float32) if has_h0 else None
        _fwd_chunk, chunk, every = _steps()
        bn = triton.next_power_of_2(d_state)
        grid = (batch, triton.cdiv(dim, bd), segs)
        dummy = A32
        common = dict(HAS_D=D32 is not None, HAS_Z=z is not None, HAS_BIAS=bias32 is not None,
                      SOFTPLUS=softplus, HAS_H0=has_h0, HAS_DLAST=dlast is not None, BD=bd, BN=bn,
                      T=chunk, num_warps=CONFIG["bwd_warps"])  # fmt: skip
        ins = (u, delta, A32, B, C, D32 if D32 is not None else dummy, z if z is not None else u,
               bias32 if bias32 is not None else dummy, ckpt)  # fmt: skip
        outs = (dout, dlast if dlast is not None else dummy, du, ddelta,
                dz if dz is not None else du, dA, dD, dbias, dB, dC, dh0 if dh0 is not None else dA,
                dim, length, d_state, dim // groups, groups, n_ckpt)  # fmt: skip
        steps = every // chunk
        scratch = u.new_empty(segs * blocks * steps * bn * bd if steps > 1 else 1,
                              dtype=torch.float32)  # fmt: skip
        carry = dummy
        if segs > 1:
            carry = u.new_empty(segs, 2, batch, dim, d_state, dtype=torch.float32)
            _bwd_carry_kernel[grid](
                delta, A32, C, z if z is not None else u,
                bias32 if bias32 is not None else dummy, dout, carry, dim, length, d_state,
                dim // groups, groups, n_ckpt, per_seg, HAS_Z=z is not None,
                HAS_BIAS=bias32 is not None, SOFTPLUS=softplus, ROUND_GATE=round_gate, BD=bd,
                BN=bn, T=chunk, S=steps, FAST=fast_math(), num_warps=CONFIG["bwd_warps"],
            )  # fmt: skip
        extra = {} if CONFIG["bwd_maxnreg"] is None else {"maxnreg": CONFIG["bwd_maxnreg"]}
        _bwd_kernel[grid](*ins, scratch, *outs[:11], carry, *outs[11:], per_seg,
                          ROUND_GATE=round_gate, S=steps, SPLIT=segs > 1, FAST=fast_math(),
                          num_stages=CONFIG["bwd_stages"], **common, **extra)  # fmt: skip
        return (
            du,
            ddelta,
            dA.sum((0, 1)).to(A_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D32 is None else dD.sum((0, 1)).to(D_dtype),
            dz,
            None if bias32 is None else dbias.sum((0, 1)).to(bias_dtype),
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
    fn = TritonSelectiveScan
    if CONFIG["kernel"] in ("time", "seq", "lanes"):
        from mamba_asr.ops.selective_scan.triton_time import TritonTimeScan as fn
    out, last = fn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out
