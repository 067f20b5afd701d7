"""Selective scan on CUDA with Triton: K consecutive steps a lane, scanned in the thread, then
across the warp's lanes once per state and chunk.

The time-parallel kernels (``triton_time``) hand each chunk to ``tl.associative_scan``, which
pays its scan across the 32 lanes (five shuffle levels, both a and x) for every 4 steps, then, in
the backward, ``tl.gather`` reversals for the adjoint and a reduction for dA. Here a program still
owns (batch, BD channels, a group of B/C) and walks the sequence in chunks of 32 K steps, lane l
holding steps l K .. l K + K - 1 of each, but the K steps are separate (BD, 32) tensors (the
loaded tile split in registers, no data moved), so that:

- the recurrence h_t = a_t h_{t-1} + x_t runs K steps in the thread (one multiply-add a step,
  with the running product of a), and only each lane's summary (its product of a, its local h)
  goes through the scan across lanes; each step then adds its running product times the state
  entering the lane (the carry entering the chunk is folded into lane 0's first step);
- the adjoint dh_t = C_t g_t + a_{t+1} dh_{t+1} runs the same way from the last step down: in the
  thread, a_{t+1} is the next register's a (no exp computed twice, no reversal), and the scan
  across lanes runs towards lane 0 through ``tl.gather`` (one shuffle a value and level, as the
  forward direction);
- the backward carries a_t dh_t of a chunk's first step to the chunk before (the adjoint's carry
  already multiplied by its decay), so dLoss/d(initial state) is the first chunk's carry itself;
- dD and d(delta_bias) stay per lane in registers over the whole sequence and are summed once;
- the backward gives a warp TL = 32 / BD lanes of time for each of BD channels (``lanes_time``,
  16 by default: two channels, chunks of TL K steps), so that every B and C value it loads and
  every dB and dC add serves all BD (the adds were a quarter to a third of the backward, and L2
  its bound); the tiles are then read and written as flat channel-major rows and reshaped, which
  puts time first along the lanes, the layout ``tl.gather`` and the scans take, and dB and dC
  are exchanged between the warp's channels before each lane adds 4 / BD of its 4 steps;
- with as many states as lanes a channel the backward's lanes hold one state each of A, the
  entering state and the adjoint's carry (``_lane_states``, loaded once a chunk; a state takes
  them by a shuffle), and dA's terms are merged across each group of TL states as they come
  (``_da_merged``: one shuffle for two states' terms, one atomic add a lane for the group);
  bf16 B and C are read as int32 words and unpacked with a shift or a mask (``_bf16_pairs``);
  the carries passed on move up a lane a state (lane 0 taking the new one), and the state
  loop's counter goes through ``_opaque`` so that it stays 32-bit;
- the forward holds A and the states entering a chunk in its lanes in the same way, collects
  the states leaving each backward chunk there and stores them once a chunk
  (``lanes_fwd_held``), and takes a copy of its state loop without masks along time for chunks
  wholly before L (``lanes_fwd_whole``; both on by default).

K = 4 loads each tile as one 16-byte vector a lane; K = 8 as two. PREFETCH loads the next
states' A, carries, B and C a loop step ahead (the backward's top stall without it; the forward
instead takes four states a loop step, whose loads the compiler then issues together); the
backward's PREFETCH 2 alternates two states' loads (``_bwd_state`` for one state while the
other's loads are in flight), so that no loaded value is copied from one loop step to the next. The
checkpoints are those of ``triton_time`` (the state entering every backward chunk after the
first, fp32; the forward, 32 lanes and one channel a program, stores 32 / TL a chunk from the
lanes that end one), so its host code runs these kernels (``CONFIG["kernel"] = "lanes"``, the
default; ``lanes_k``, ``lanes_unroll``, ``lanes_prefetch``, ``lanes_bc_fp32``: the forward reads
half B and C cast to fp32 once, both by ``_fp32_pair_kernel``); arithmetic is fp32 throughout and
the gate silu(z) is rounded to z's dtype as PyTorch rounds it. On an H100 the peer kernel takes
1.87-2.08x our GPU time for a forward+backward in fp32 and 1.48-1.62x in bf16 at the benchmark's
shapes; two channels a backward warp took 15-43% off the backward, the held values with dA merged
(and whole chunks, bf16 read as words) 9-10% in bf16; on an H200 the 32-bit counter and the
shifted carries another 2-3% (2.02-2.29x and 1.51-1.61x), and on an H100 the forward's held
values and unmasked whole chunks 6-7% off the bf16 forward (1.84-2.13x and 1.53-1.68x;
docs/benchmarks.md). Shape key as ``triton_kernel``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_asr.ops.selective_scan.triton_kernel import LOG2E, combine, gate, softplus
from mamba_asr.ops.selective_scan.triton_time import (
    entering_state,
    program_channels,
    program_index,
    skip_and_bias,
)


@triton.jit
def _split4(x):
    """The 4 columns of a (BD, 32, 4) tile as (BD, 32) tensors (in-thread: no data moves)."""
    lo, hi = tl.split(tl.reshape(x, (x.shape[0], x.shape[1], 2, 2)))
    c0, c2 = tl.split(lo)
    c1, c3 = tl.split(hi)
    return c0, c1, c2, c3


@triton.jit
def _join4(c0, c1, c2, c3):
    """Inverse of ``_split4``."""
    x = tl.join(tl.join(c0, c2), tl.join(c1, c3))
    return tl.reshape(x, (c0.shape[0], c0.shape[1], 4))


@triton.jit
def _offsets(t0, lane, j, K: tl.constexpr):
    """(1, 32, 4) steps of a chunk starting at t0: lane l's steps l K + 4 j .. l K + 4 j + 3."""
    m4 = tl.arange(0, 4)
    return t0 + lane[None, :, None] * K + 4 * j + m4[None, None, :]


@triton.jit
def _flat_channel(BD: tl.constexpr, TL: tl.constexpr):
    """(BD TL, 1): the channel of each flat row, row c TL + l being lane l of channel c (the
    layout in which BD channels share a warp's lanes, TL each)."""
    return (tl.arange(0, BD * TL) // TL)[:, None]


@triton.jit
def _flat_offsets(t0, j, K: tl.constexpr, BD: tl.constexpr, TL: tl.constexpr):
    """``_offsets`` for the BD channels' lanes as flat rows (``_flat_channel``): (BD TL, 4)."""
    lane = tl.arange(0, BD * TL) % TL
    m4 = tl.arange(0, 4)
    return t0 + lane[:, None] * K + 4 * j + m4[None, :]


@triton.jit
def _steps_mask(t, L, ok, TAIL: tl.constexpr):
    """Steps t's mask: before L and ok; without TAIL (a whole chunk) ok alone, broadcast to t."""
    return (t < L) & ok if TAIL else tl.full(t.shape, True, tl.int1) & ok


@triton.jit
def _bf16_pairs(w):
    """fp32 values of the bf16 pairs packed in int32 w (..., 2): (..., 4), the low half of each
    word first (its element at the lower address). bf16 is fp32's upper half: one shift or one
    mask a value, where a conversion takes a byte move and a shift."""
    lo = (w << 16).to(tl.float32, bitcast=True)
    hi = (w & -65536).to(tl.float32, bitcast=True)
    x = tl.join(lo, hi)  # (..., 2, 2): pair, then half
    return tl.reshape(x, (w.shape[0], 4))


@triton.jit
def _load_k(base, t0, L, lane, mask, K: tl.constexpr, BD: tl.constexpr, TL: tl.constexpr,
            ROWS: tl.constexpr = True, TAIL: tl.constexpr = True,
            BITS: tl.constexpr = False):  # fmt: skip
    """K fp32 tensors, step k of each lane of the rows at base (a pointer, or (BD, 1, 1) of them),
    shaped (BD, TL); 0 past L and where not mask (broadcast as base). Where a warp's lanes hold
    several channels (TL < 32) the tile is read as flat rows, channel-major (row c TL + l is lane
    l of channel c; base the first channel's row, a scalar, ROWS whether the channels' rows
    follow it L apart or all read base's; mask (BD TL, 1) or a scalar), then reshaped: its lanes
    then run along time first, the layout ``tl.gather`` and the scans along time take without
    conversions. One scalar base a tensor (uniform across the warp) and one offset tile shared by
    all tensors keep per-lane 64-bit pointers out of the registers. Without TAIL the steps all lie
    before L (a whole chunk), and L masks nothing; a mask None (TL = 32) masks no row. With BITS
    (bf16 at base, which lies at an even element as L is a multiple of 4, TL < 32) each lane's 4
    steps are read as two int32 words and unpacked by ``_bf16_pairs`` (the 4 steps lie before L
    or past it together)."""
    out = ()
    for j in tl.static_range(K // 4):
        if TL < 32:
            if BITS:
                # each lane's two words in the row (steps tf .. tf + 3): one mask, tf's (L a
                # multiple of 4), so that the two are one 8-byte load
                tf = t0 + (tl.arange(0, BD * TL) % TL)[:, None] * K + 4 * j
                wo = (tf >> 1) + tl.arange(0, 2)[None, :]
                if ROWS:
                    wo = wo + _flat_channel(BD, TL) * (L >> 1)
                words = base.to(tl.pointer_type(tl.int32))
                w = tl.load(words + wo, mask=_steps_mask(tf, L, mask, TAIL), other=0)
                out = out + _split4(tl.reshape(_bf16_pairs(w), (BD, TL, 4)))
            else:
                t = _flat_offsets(t0, j, K, BD, TL)
                off = t
                if ROWS:
                    off = t + _flat_channel(BD, TL) * L
                x = tl.load(base + off, mask=_steps_mask(t, L, mask, TAIL), other=0.0)
                x = x.to(tl.float32)
                out = out + _split4(tl.reshape(x, (BD, TL, 4)))
        else:
            t = _offsets(t0, lane, j, K)
            if mask is None and not TAIL:  # every state before N, every step before L
                x = tl.load(base + t)
            elif mask is None:
                x = tl.load(base + t, mask=t < L, other=0.0)
            else:
                x = tl.load(base + t, mask=_steps_mask(t, L, mask, TAIL), other=0.0)
            out = out + _split4(x.to(tl.float32))
    return out


@triton.jit
def _load_steps(ptr, rows, t0, L, md, lane, K: tl.constexpr, BD: tl.constexpr = 1,
                TL: tl.constexpr = 32):  # fmt: skip
    """K (BD, TL) fp32 tensors, step k of each lane of rows (BD,) of a (., L) tensor; 0 past L
    and on masked rows. With TL < 32, rows is the first row (a scalar) and md (BD TL, 1), flat
    (as the lanes backward makes them)."""
    if TL < 32:
        out = _load_k(ptr + rows * L, t0, L, lane, md, K, BD, TL)
    else:
        out = _load_k(ptr + rows[:, None, None] * L, t0, L, lane, md[:, None, None], K, BD, TL)
    return out


@triton.jit
def _load_bc(ptr, t0, L, lane, ok, K: tl.constexpr, BD: tl.constexpr = 1,
             TL: tl.constexpr = 32, TAIL: tl.constexpr = True,
             BITS: tl.constexpr = False):  # fmt: skip
    """K (BD, TL) fp32 tensors of one state's B or C row at ptr, the same for the program's BD
    channels; 0 past L or where not ok. Read as the channels' tiles are (each lane its own values,
    the lanes of one address served by one transaction), they need no conversion between
    layouts where channels share the warp's lanes. BITS as ``_load_k``'s."""
    return _load_k(ptr, t0, L, lane, ok, K, BD, TL, False, TAIL, BITS)


@triton.jit
def _state_loads(n0, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md, bc0, t0, L, lane,
                 N: tl.constexpr, NU: tl.constexpr, K: tl.constexpr, CARRY: tl.constexpr,
                 BD: tl.constexpr = 1, TL: tl.constexpr = 32, TAIL: tl.constexpr = True,
                 SCALARS: tl.constexpr = True, BITS: tl.constexpr = False,
                 EVERY: tl.constexpr = False):  # fmt: skip
    """What states n0 .. n0 + NU - 1 read in a chunk, flat, per state: A (BD,), the state entering
    the chunk (at hrow, zero where not hok), with CARRY the adjoint's carry (at src, zero where not
    sok), then K B and K C (1, 32) tensors; zeros past N. TAIL as ``_load_k``'s. Without SCALARS
    B and C alone (the lanes hold the rest: ``_lane_states``). EVERY (B and C alone, 32 lanes):
    every state asked for lies before N, and B and C are read without a mask of states."""
    out = ()
    for j in tl.static_range(NU):
        n = n0 + j
        ok = None if EVERY else n < N
        if SCALARS:
            out = out + (
                tl.load(A_ptr + offs_d * N + n, mask=md & ok, other=0.0),
                tl.load(hrow + n, mask=hok & ok, other=0.0),
            )
        if CARRY and SCALARS:
            out = out + (tl.load(src + n, mask=sok & ok, other=0.0),)
        out = out + _load_bc(B_ptr + bc0 + n * L, t0, L, lane, ok, K, BD, TL, TAIL, BITS)
        out = out + _load_bc(C_ptr + bc0 + n * L, t0, L, lane, ok, K, BD, TL, TAIL, BITS)
    return out


@triton.jit
def _tile(vals, j):
    """Steps 4 j .. 4 j + 3 of K (BD, 32) tensors as one (BD, 32, 4) tile (``_offsets``' j)."""
    return _join4(vals[4 * j], vals[4 * j + 1], vals[4 * j + 2], vals[4 * j + 3])


@triton.jit
def _store_steps(ptr, rows, t0, L, md, lane, vals, K: tl.constexpr, BD: tl.constexpr = 1,
                 TL: tl.constexpr = 32):  # fmt: skip
    """Store K (BD, TL) tensors as ``_load_steps`` reads them (cast to ptr's dtype; rows and md
    as there)."""
    for j in tl.static_range(K // 4):
        if TL < 32:
            t = _flat_offsets(t0, j, K, BD, TL)
            x = tl.reshape(_tile(vals, j), (BD * TL, 4))
            off = t + _flat_channel(BD, TL) * L
            tl.store(ptr + rows * L + off, x, mask=md & (t < L))
        else:
            t = _offsets(t0, lane, j, K)
            tl.store(
                ptr + rows[:, None, None] * L + t, _tile(vals, j), mask=md[:, None, None] & (t < L)
            )


@triton.jit
def _add_bc(ptr, t0, L, lane, ok, vals, K: tl.constexpr, TL: tl.constexpr = 32,
            TAIL: tl.constexpr = True):  # fmt: skip
    """Add K (BD, TL) tensors, summed over the BD channels, into one state's dB or dC row at ptr
    (atomically, fp32). Where the channels share a warp's lanes (BD TL = 32), each of a step's BD
    lanes adds 4 / BD of its 4 steps' sums: every add is issued once. TAIL as ``_load_k``'s."""
    BD: tl.constexpr = vals[0].shape[0]
    M: tl.constexpr = 4 // BD  # steps of a tile a lane adds where the channels share the lanes
    for j in tl.static_range(K // 4):
        if TL < 32:
            c = tl.arange(0, BD)[:, None]  # the lane's channel: it adds steps c M .. c M + M - 1
            picks = ()
            if BD == 2:  # each lane sends the partner the two steps it adds, keeps its own two
                lo = c == 0
                other = (tl.arange(0, 32) + TL) % 32
                for m in tl.static_range(2):
                    own = tl.where(lo, vals[4 * j + m], vals[4 * j + 2 + m])
                    send = tl.reshape(tl.where(lo, vals[4 * j + 2 + m], vals[4 * j + m]), (32,))
                    got = tl.reshape(tl.gather(send, other, 0), (BD, TL))
                    picks = picks + (own + got,)
            else:
                sums = ()
                for k in tl.static_range(4):
                    sums = sums + (tl.sum(vals[4 * j + k], axis=0)[None, :],)
                for m in tl.static_range(M):
                    v = sums[m]
                    for q in tl.static_range(1, BD):
                        v = tl.where(c == q, sums[q * M + m], v)
                    picks = picks + (v,)
            x = picks[0][:, :, None]
            if M == 2:
                x = tl.join(picks[0], picks[1])
            r = tl.arange(0, 32)
            t = t0 + (r % TL)[:, None] * K + 4 * j + (r // TL)[:, None] * M
            t = t + tl.arange(0, M)[None, :]
            tl.atomic_add(ptr + t, tl.reshape(x, (32, M)), mask=_steps_mask(t, L, ok, TAIL),
                          sem="relaxed")  # fmt: skip
        else:
            t = _offsets(t0, lane, j, K)
            x = tl.sum(_tile(vals, j), axis=0, keep_dims=True)
            tl.atomic_add(ptr + t, x, mask=_steps_mask(t, L, ok, TAIL), sem="relaxed")


@triton.jit
def _to_lane(x, lane, src, fill, at):
    """x (BD, 32) as seen from each lane: lane src's value, or ``fill`` where the lane is ``at``."""
    got = tl.gather(x, tl.broadcast_to(src[None, :], x.shape), 1)
    return tl.where((lane == at)[None, :], fill, got)


@triton.jit
def _lanes_down(M, V, lane, TL: tl.constexpr):
    """Inclusive scan of the affine maps r -> M r + V over the TL lanes of a channel from the last
    towards lane 0: lane l ends with the composition of lanes l .. TL - 1 (the last one's applied
    first), Hillis-Steele over ``tl.gather`` (one shuffle a value and level;
    ``tl.associative_scan(reverse=True)`` also flips its inputs and outputs)."""
    for i in tl.static_range(5):
        if (1 << i) < TL:
            idx = tl.broadcast_to(tl.minimum(lane + (1 << i), TL - 1)[None, :], M.shape)
            has = (lane + (1 << i) < TL)[None, :]
            Mo = tl.gather(M, idx, 1)
            Vo = tl.gather(V, idx, 1)
            V = tl.where(has, M * Vo + V, V)
            M = tl.where(has, M * Mo, M)
    return M, V


@triton.jit
def _states_up(dts, dtus, Bs, A2, h0, lane, K: tl.constexpr):
    """The states h_t of a chunk from h0 entering it, for one state of the BD channels (A2 = A
    log2(e) and h0 shaped (BD, 1), or (BD, 32) the same along the lanes): (h, x, a), each K
    (BD, 32) tensors (x = dt u B as the recurrence adds it, before the fold), and (BD, 32) the
    state leaving each lane (the last lane's: the state leaving the chunk)."""
    xs = ()
    as_ = ()
    hl = ()
    ps = ()
    for k in tl.static_range(K):
        a = tl.math.exp2(dts[k] * A2)
        x = dtus[k] * Bs[k]
        xs = xs + (x,)
        as_ = as_ + (a,)
        if k == 0:  # the state entering the chunk, folded into lane 0's first step
            h = tl.where((lane == 0)[None, :], a * h0 + x, x)
            p = a
        else:
            h = a * h + x
            p = p * a
        hl = hl + (h,)
        ps = ps + (p,)
    _m, v = tl.associative_scan((p, h), 1, combine)  # lane l: the state leaving lane l
    hin = _to_lane(v, lane, tl.maximum(lane - 1, 0), 0.0, 0)  # entering lane l (lane 0: folded)
    hs = ()
    for k in tl.static_range(K):
        hs = hs + (hl[k] + ps[k] * hin,)
    return hs, xs, as_, v


@triton.jit
def _fwd_states(dts, dtus, ys, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0, t0, L, lane, dst,
                dmask, Ah, hin, hout, down, lane_end, N: tl.constexpr, NU: tl.constexpr,
                K: tl.constexpr, BD: tl.constexpr, TL: tl.constexpr, PREFETCH: tl.constexpr,
                HELD: tl.constexpr, TAIL: tl.constexpr):  # fmt: skip
    """The forward's loop over the states of a chunk: ys (K (BD, TL)) with every state's terms
    added, and with HELD hout, the states leaving each CK lanes collected (``_fwd_lanes_kernel``);
    without HELD each state's are stored at dst + n under dmask. Without TAIL the chunk lies
    before L, and with HELD and no PREFETCH (every state a loop step asks for lies before N)
    B and C are read without a mask."""
    EVERY: tl.constexpr = HELD and not PREFETCH and not TAIL
    SC: tl.constexpr = not HELD  # whether _state_loads reads A and the entering state
    S: tl.constexpr = 2 + 2 * K if SC else 2 * K  # values a state in its tuple
    if PREFETCH:
        nxt = _state_loads(0, A_ptr, B_ptr, C_ptr, hrow, hok, hrow, hok, offs_d, md, bc0, t0,
                           L, lane, N, NU, K, False, BD, TL, TAIL, SC)  # fmt: skip
    for n0 in range(0, N, NU):
        # PREFETCH: the next states' A, entering state, B and C loaded a loop step ahead
        if PREFETCH:
            cur = nxt
            nxt = _state_loads(n0 + NU, A_ptr, B_ptr, C_ptr, hrow, hok, hrow, hok, offs_d,
                               md, bc0, t0, L, lane, N, NU, K, False, BD, TL, TAIL,
                               SC)  # fmt: skip
        else:
            cur = _state_loads(n0, A_ptr, B_ptr, C_ptr, hrow, hok, hrow, hok, offs_d, md,
                               bc0, t0, L, lane, N, NU, K, False, BD, TL, TAIL,
                               SC, False, EVERY)  # fmt: skip
        for j in tl.static_range(NU):
            n = n0 + j
            ok = n < N
            if HELD:
                A2 = _from_lane(Ah, n) * LOG2E
                h0 = _from_lane(hin, TL - N + n)
                Bs = cur[j * S : j * S + K]
                Cs = cur[j * S + K : j * S + S]
            else:
                A2 = cur[j * S][:, None] * LOG2E
                h0 = cur[j * S + 1][:, None]
                Bs = cur[j * S + 2 : j * S + 2 + K]
                Cs = cur[j * S + 2 + K : j * S + S]
            hs, _xs, _as, v = _states_up(dts, dtus, Bs, A2, h0, lane, K)
            ny = ()
            for k in tl.static_range(K):
                ny = ny + (ys[k] + hs[k] * Cs[k],)
            ys = ny
            if HELD:  # each CK lanes' last takes the state leaving them
                hout = tl.where(lane_end, v, tl.gather(hout, down, 1))
            else:
                # the state leaving the chunk (the last lane's), and with CK < 32 the others
                tl.store(dst + n, v, mask=dmask & ok)
    return ys, hout


@triton.jit
def _fwd_lanes_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                      out_ptr, ypre_ptr, ckpt_ptr, last_ptr, D, L, G, n_chunks, n_ckpt,
                      HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr, ROUND_GATE: tl.constexpr,
                      SAVE_Y: tl.constexpr, N: tl.constexpr, BD: tl.constexpr, K: tl.constexpr,
                      NU: tl.constexpr, PREFETCH: tl.constexpr, BATCH_FAST: tl.constexpr,
                      FAST: tl.constexpr, CK: tl.constexpr = 32,
                      HELD: tl.constexpr = False, WHOLE: tl.constexpr = False):  # fmt: skip
    # ckpt: (B, D, n_ckpt, N) fp32, slot s >= 1 the state entering step s CK K (the backward's
    # chunks: CK lanes of K steps; the forward's chunks are 32 K steps, so with CK < 32 it stores
    # 32 / CK of them a chunk, from the lanes that end one); last: as triton_time's forward.
    # HELD (N <= CK, N a multiple of NU): A and the states entering a chunk are held in the
    # lanes, taken by a shuffle a state; the states leaving each CK lanes are collected in them
    # (shifted down a lane a state) and stored once a chunk, one a lane. WHOLE: chunks wholly
    # before L take a copy of the state loop with no mask along time (``_fwd_states``)
    TL: tl.constexpr = 32
    R: tl.constexpr = TL // CK  # checkpoints a chunk
    offs_d, md, rows, bc0, ck = program_channels(ckpt_ptr, D, L, G, n_ckpt, N, BD, BATCH_FAST)
    lane = tl.arange(0, TL)
    Dv, bias = skip_and_bias(D_ptr, bias_ptr, offs_d, md, HAS_D, HAS_BIAS, BD)
    last_lane = md[:, None] & (lane == TL - 1)[None, :]
    if HELD:
        # state l's A in lane l; the states entering the chunk where the last CK lanes collect
        # those leaving it (state n's in lane TL - N + n): the initial state, or zeros
        Ah = tl.load(A_ptr + offs_d[:, None] * N + lane[None, :],
                     mask=md[:, None] & (lane < N)[None, :], other=0.0)  # fmt: skip
        hin = tl.zeros((BD, TL), tl.float32)
        if HAS_H0:
            hin = tl.load(h0_ptr + rows[:, None] * N + (lane - (TL - N))[None, :],
                          mask=md[:, None] & (lane >= TL - N)[None, :], other=0.0)  # fmt: skip
        down = tl.broadcast_to(tl.minimum(lane + 1, TL - 1)[None, :], (BD, TL))
        lane_end = (lane % CK == CK - 1)[None, :]
    else:  # (what _fwd_states takes for HELD's values, unused)
        Ah = tl.zeros((BD, TL), tl.float32)
        hin = Ah
        down = tl.broadcast_to(lane[None, :], (BD, TL))
        lane_end = last_lane
    for c in range(n_chunks):
        hrow, hok = entering_state(ck, h0_ptr + rows * N, c * R, md, N, HAS_H0)
        hout = hin  # HELD: the states leaving each CK lanes, shifted down a lane a state
        if HELD:
            dst = ck[:, None] + lane[None, :] * 0  # (the per-state store's, unused)
            dmask = lane_end
        elif R == 1:
            dst = tl.where(c + 1 < n_chunks, ck + (c + 1) * N, last_ptr + rows * N)
            dst = dst[:, None] + lane[None, :] * 0
            dmask = last_lane
        else:  # lane l ends checkpoint interval s (l + 1 a multiple of CK) or the sequence
            s = c * R + (lane + 1) // CK
            ends = ((lane + 1) % CK == 0) & (
                (s < n_ckpt) | ((c + 1 == n_chunks) & (lane == TL - 1))
            )
            dst = tl.where((s < n_ckpt)[None, :], ck[:, None] + s[None, :] * N,
                           (last_ptr + rows * N)[:, None])  # fmt: skip
            dmask = md[:, None] & ends[None, :]
        t0 = c * (TL * K)
        us = _load_steps(u_ptr, rows, t0, L, md, lane, K, BD, TL)
        pres = _load_steps(delta_ptr, rows, t0, L, md, lane, K, BD, TL)
        dts = ()
        dtus = ()
        ys = ()
        for k in tl.static_range(K):
            tk = t0 + lane * K + k
            pre = pres[k] + bias[:, None]
            dt = softplus(pre, FAST) if SOFTPLUS else pre
            dt = tl.where(md[:, None] & (tk < L)[None, :], dt, 0.0)  # past L: a = 1, x = 0
            dts = dts + (dt,)
            dtus = dtus + (dt * us[k],)
            ys = ys + (Dv[:, None] * us[k],)
        if WHOLE and t0 + TL * K <= L:  # a whole chunk: a copy of the state loop, no mask in time
            ys, hout = _fwd_states(dts, dtus, ys, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0,
                                   t0, L, lane, dst, dmask, Ah, hin, hout, down, lane_end, N, NU,
                                   K, BD, TL, PREFETCH, HELD, False)  # fmt: skip
        else:
            ys, hout = _fwd_states(dts, dtus, ys, A_ptr, B_ptr, C_ptr, hrow, hok, offs_d, md, bc0,
                                   t0, L, lane, dst, dmask, Ah, hin, hout, down, lane_end, N, NU,
                                   K, BD, TL, PREFETCH, HELD, True)  # fmt: skip
        if HELD:
            # lane l holds state l % CK - (CK - N) leaving the chunk's (l // CK)-th CK lanes:
            # checkpoint slot c R + l // CK + 1, or past the last slot (the last chunk's end) last
            nn = lane % CK - (CK - N)
            s = c * R + lane // CK + 1
            keep = (nn >= 0) & ((s < n_ckpt) | ((c + 1 == n_chunks) & (lane >= TL - CK)))
            slots = tl.where((s < n_ckpt)[None, :], ck[:, None] + s[None, :] * N,
                             (last_ptr + rows * N)[:, None]) + nn[None, :]  # fmt: skip
            tl.store(slots, hout, mask=md[:, None] & keep[None, :])
            hin = hout
        if HAS_Z:
            if SAVE_Y:
                _store_steps(ypre_ptr, rows, t0, L, md, lane, ys, K, BD, TL)
            zs = _load_steps(z_ptr, rows, t0, L, md, lane, K, BD, TL)
            gy = ()
            for k in tl.static_range(K):
                silu, _sg = gate(zs[k], ROUND_GATE, z_ptr.dtype.element_ty)
                gy = gy + (ys[k] * silu,)
            ys = gy
        _store_steps(out_ptr, rows, t0, L, md, lane, ys, K, BD, TL)
        if not HELD:
            tl.debug_barrier()  # the states just stored are read by other threads next chunk


@triton.jit
def _from_lane(x, n):
    """(BD, TL) x's lane n in every lane of its channel (n the same across the warp)."""
    return tl.gather(x, tl.zeros(x.shape, tl.int32) + n, 1)


@triton.jit
def _opaque(n, hi: tl.constexpr):
    """n (an int32 scalar in [0, hi)) through a register move the compiler cannot see through, its
    range restated. The state loop's counter taken so keeps 32 bits: LLVM otherwise widens it to
    64 (a 64-bit add, compares and copies a state on sm_90). Not in triton's interpreter, which
    has no inline assembly."""
    n = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [n], dtype=tl.int32, is_pure=True,
                                  pack=1)  # fmt: skip
    tl.assume(n >= 0)
    tl.assume(n < hi)
    return n


@triton.jit
def _lane_states(A_ptr, hrow, hok, src, sok, offs_d, md, lane, N: tl.constexpr):
    """What the backward's states read besides B and C, for N = TL states a channel held one a
    lane (state l's in lane l, (BD, TL) each): A, the state entering the chunk (at hrow, zero
    where not hok), the adjoint's carry (at src, zero where not sok), and zeros for the carries
    the chunk passes on. Loaded once a chunk in one load each, rather than a load each a
    state."""
    ln = (lane < N)[None, :]
    return (
        tl.load(A_ptr + offs_d[:, None] * N + lane[None, :], mask=md[:, None] & ln, other=0.0),
        tl.load(hrow[:, None] + lane[None, :], mask=hok[:, None] & ln, other=0.0),
        tl.load(src[:, None] + lane[None, :], mask=sok[:, None] & ln, other=0.0),
        tl.zeros((offs_d.shape[0], lane.shape[0]), tl.float32),
    )


@triton.jit
def _bwd_state(cur, j, n, ok, ddt, dus, dts, dtus, gy, lane, up, first_lane, dst, dA_ptr, dB_ptr,
               dC_ptr, offs_d, md, bc0, t0, L, N: tl.constexpr, K: tl.constexpr,
               TL: tl.constexpr, TAIL: tl.constexpr = True, SUM_DA: tl.constexpr = True,
               lanes_held=None, SHIFT: tl.constexpr = False):  # fmt: skip
    """One state's part of a chunk's backward (state n, the j-th in cur, ``_state_loads``' tuple):
    the adjoint, the carry for the chunk before, dB and dC added in, and with SUM_DA dA (summed
    across the lanes); returns ddt and dus with its terms added, and its dA terms per lane
    ((BD, TL), for the caller to sum where SUM_DA is off). With lanes_held (``_lane_states``: A,
    the entering state and the carry, state l's in lane l) cur holds B and C alone, the scalars
    come from the lanes (one shuffle each), and the carry for the chunk before is not stored but
    returned in the lanes (state n's in lane n of the fourth tensor) with the rest; with SHIFT
    the fourth tensor moves up a lane and lane 0 takes state n's (after the N = TL states of a
    chunk, state n's in lane N - 1 - n: no compare with n a state)."""
    if lanes_held is None:
        S: tl.constexpr = 3 + 2 * K  # values a state in _state_loads' tuple
        A = cur[j * S][:, None]
        h0 = cur[j * S + 1][:, None]
        carry = cur[j * S + 2][:, None]  # enters the chunk's last step
        Bs = cur[j * S + 3 : j * S + 3 + K]
        Cs = cur[j * S + 3 + K : j * S + S]
    else:
        A = _from_lane(lanes_held[0], n)
        h0 = _from_lane(lanes_held[1], n)
        carry = _from_lane(lanes_held[2], n)
        Bs = cur[j * 2 * K : j * 2 * K + K]
        Cs = cur[j * 2 * K + K : j * 2 * K + 2 * K]
    hs, xs, as_, _v = _states_up(dts, dtus, Bs, A * LOG2E, h0, lane, K)
    # the adjoint, last step first: in the thread from 0, lam_k = gc_k + a_{k+1}
    # lam_{k+1} with r_k = a_{k+1} ... a_{K-1} its coefficient of the carry that
    # enters the lane's last step; the chunk's carry folded into the last lane's last step
    gc = gy[K - 1] * Cs[K - 1]
    lam = tl.where((lane == TL - 1)[None, :], gc + carry, gc)
    lr = (lam,)
    rr = (tl.full(lam.shape, 1.0, tl.float32),)
    r = tl.full(lam.shape, 1.0, tl.float32)
    for kk in tl.static_range(K - 1):
        lam = gy[K - 2 - kk] * Cs[K - 2 - kk] + as_[K - 1 - kk] * lam
        r = as_[K - 1 - kk] * r
        lr = (lam,) + lr
        rr = (r,) + rr
    # lane l passes a_first lam_first to lane l - 1: M r + V of what enters it
    _m, v = _lanes_down(as_[0] * r, as_[0] * lam, lane, TL)
    rin = _to_lane(v, lane, up, 0.0, TL - 1)  # enters lane l's last step (the last: folded)
    # a_t dLoss/dh_t at the chunk's first step, for the chunk before: lane 0's
    if lanes_held is None:
        tl.store(dst[:, None] + n + lane[None, :] * 0, v, mask=first_lane & ok)
    else:
        if SHIFT:
            out = _to_lane(lanes_held[3], lane, tl.maximum(lane - 1, 0), v, 0)
        else:
            out = tl.where((lane == n)[None, :], _from_lane(v, 0), lanes_held[3])
        lanes_held = (lanes_held[0], lanes_held[1], lanes_held[2], out)
    dA = tl.zeros_like(dts[0])
    ndt = ()
    ndu = ()
    dBs = ()
    dCs = ()
    for k in tl.static_range(K):
        lam = lr[k] + rr[k] * rin  # dLoss/dh_t
        dlog = lam * (hs[k] - xs[k])  # dLoss/d(dt A): dh_t a_t h_{t-1}
        dA += dlog * dts[k]
        ndt = ndt + (ddt[k] + dlog * A,)
        ndu = ndu + (dus[k] + lam * Bs[k],)
        dBs = dBs + (lam * dtus[k],)
        dCs = dCs + (hs[k] * gy[k],)
    ddt = ndt
    dus = ndu
    if SUM_DA:
        tl.atomic_add(dA_ptr + offs_d * N + n, tl.sum(dA, axis=1), mask=md & ok,
                      sem="relaxed")  # fmt: skip
    _add_bc(dB_ptr + bc0 + n * L, t0, L, lane, ok, dBs, K, TL, TAIL)
    _add_bc(dC_ptr + bc0 + n * L, t0, L, lane, ok, dCs, K, TL, TAIL)
    if lanes_held is None:
        lanes_held = dA  # (nothing held: a placeholder the callers drop)
    return ddt, dus, dA, lanes_held


@triton.jit
def _da_merge(p, x, lane, S: tl.constexpr):
    """Two (BD, TL) tensors of per-lane terms merged across the lanes S apart (S a power of two):
    a lane with bit S clear ends with p's terms summed over it and its partner lane ^ S, the
    others with x's (one shuffle for the two)."""
    hi = ((lane & S) != 0)[None, :]
    send = tl.where(hi, p, x)
    idx = tl.broadcast_to((lane ^ S)[None, :], p.shape)
    return tl.where(hi, x, p) + tl.gather(send, idx, 1)


@triton.jit
def _da_add(dA_ptr, offs_d, md, n0, x, lane, N: tl.constexpr, LOG: tl.constexpr):
    """Add x, the dA terms of states n0 .. n0 + 2^LOG - 1 merged by ``_da_merge`` at S = TL/2,
    TL/4, ..., TL/2^LOG (merge k decides bit k of the state), into dA: each lane holds one
    state's sum over the channel's lanes, the state given by its bits of TL/2 .. TL/2^LOG."""
    TL: tl.constexpr = lane.shape[0]
    slot = tl.zeros_like(lane)
    for k in tl.static_range(LOG):
        slot += ((lane // (TL >> (k + 1))) % 2) << k
    # (the mask made full: triton 3.6's interpreter takes a (1, 1) mask of an atomic, broadcast
    # or not, for its first element alone)
    tl.atomic_add(dA_ptr + offs_d[:, None] * N + n0 + slot[None, :], x,
                  mask=md[:, None] & (lane < TL)[None, :], sem="relaxed")  # fmt: skip


@triton.jit
def _da_merged(x, p0, p1, p2, p3, p4, m, dA_ptr, offs_d, md, n0, lane, N: tl.constexpr,
               LOG: tl.constexpr):  # fmt: skip
    """State m (of its group of 2^LOG, n0 the group's first; m a run-time value the same across
    the warp) of the dA merging: its terms x merged with those waiting at each level while m's
    bits are ones (a binary counter's carries), left waiting at the first zero; the group's last
    state adds the merged sums (``_da_add``). Returns the waiting terms (p0 .. p4, level k's
    those of 2^k states)."""
    TL: tl.constexpr = lane.shape[0]
    if m % 2 == 0:
        p0 = x
    else:
        x = _da_merge(p0, x, lane, TL // 2)
        if LOG == 1:
            _da_add(dA_ptr, offs_d, md, n0, x, lane, N, LOG)
        else:
            if (m // 2) % 2 == 0:
                p1 = x
            else:
                x = _da_merge(p1, x, lane, TL // 4)
                if LOG == 2:
                    _da_add(dA_ptr, offs_d, md, n0, x, lane, N, LOG)
                else:
                    if (m // 4) % 2 == 0:
                        p2 = x
                    else:
                        x = _da_merge(p2, x, lane, TL // 8)
                        if LOG == 3:
                            _da_add(dA_ptr, offs_d, md, n0, x, lane, N, LOG)
                        else:
                            if (m // 8) % 2 == 0:
                                p3 = x
                            else:
                                x = _da_merge(p3, x, lane, TL // 16)
                                if LOG == 4:
                                    _da_add(dA_ptr, offs_d, md, n0, x, lane, N, LOG)
                                else:
                                    if (m // 16) % 2 == 0:
                                        p4 = x
                                    else:
                                        x = _da_merge(p4, x, lane, TL // 32)
                                        _da_add(dA_ptr, offs_d, md, n0, x, lane, N, LOG)
    return p0, p1, p2, p3, p4


@triton.jit
def _bwd_states(ddt, dus, dts, dtus, gy, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md,
                bc0, t0, L, lane, up, first_lane, dst, dA_ptr, dB_ptr, dC_ptr, N: tl.constexpr,
                NU: tl.constexpr, K: tl.constexpr, PREFETCH: tl.constexpr, BD: tl.constexpr,
                TL: tl.constexpr, TAIL: tl.constexpr, DA_LOG: tl.constexpr = 0,
                HELD: tl.constexpr = False, BITS: tl.constexpr = False,
                IV32: tl.constexpr = False, SHIFT: tl.constexpr = False):  # fmt: skip
    """A chunk's loop over the states (``_bwd_state`` each, their loads as PREFETCH says); returns
    ddt and dus with every state's terms added. Without TAIL the chunk lies before L: no step of it
    is masked. With DA_LOG (one state a loop step, not ping-pong; TL = 2^DA_LOG lanes a channel
    and N a multiple of TL) dA is not summed across the lanes once a state: each group of TL
    states' per-lane terms is merged pairwise as the states come (``_da_merged``: TL - 1 shuffles
    for the TL states, against log2(TL) a state) until each lane holds one state's sum, which it
    adds to dA: one atomic add a lane for the TL states, against one a state. With HELD (one
    state a loop step, not ping-pong, N = TL) the lanes hold A, the entering states and the
    carries (``_lane_states``), loaded once a chunk, and the carries passed on are stored once at
    the end, one a lane (SHIFT: collected as ``_bwd_state``'s SHIFT says). BITS: B and C read as
    bf16 pairs (``_load_k``). IV32 (one state a loop step, not ping-pong): the loop's counter
    taken through ``_opaque``."""
    if PREFETCH == 2:  # ping-pong: two states' loads live, none copied between them (NU 1)
        a = _state_loads(0, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md, bc0, t0, L,
                         lane, N, 1, K, True, BD, TL, TAIL)  # fmt: skip
        for n0 in range(0, N, 2):
            b = _state_loads(n0 + 1, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md,
                             bc0, t0, L, lane, N, 1, K, True, BD, TL, TAIL)  # fmt: skip
            ddt, dus, _da, _lh = _bwd_state(a, 0, n0, n0 < N, ddt, dus, dts, dtus, gy, lane, up,
                                  first_lane, dst, dA_ptr, dB_ptr, dC_ptr, offs_d, md, bc0,
                                  t0, L, N, K, TL, TAIL)  # fmt: skip
            a = _state_loads(n0 + 2, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md,
                             bc0, t0, L, lane, N, 1, K, True, BD, TL, TAIL)  # fmt: skip
            ddt, dus, _da, _lh = _bwd_state(b, 0, n0 + 1, n0 + 1 < N, ddt, dus, dts, dtus, gy, lane,
                                  up, first_lane, dst, dA_ptr, dB_ptr, dC_ptr, offs_d, md,
                                  bc0, t0, L, N, K, TL, TAIL)  # fmt: skip
    else:
        SC: tl.constexpr = not HELD  # whether _state_loads reads A, the state and the carry
        if PREFETCH:
            nxt = _state_loads(0, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md, bc0,
                               t0, L, lane, N, NU, K, True, BD, TL, TAIL, SC, BITS)  # fmt: skip
        held = None
        if HELD:
            held = _lane_states(A_ptr, hrow, hok, src, sok, offs_d, md, lane, N)
            hOut = held[3]  # the carries passed on, collected state by state
        p0 = tl.zeros_like(dts[0])  # dA's terms waiting to be merged (DA_LOG)
        p1 = p0
        p2 = p0
        p3 = p0
        p4 = p0
        for i in range(0, N, NU):
            n0 = _opaque(i, N) if IV32 else i
            if PREFETCH:  # as in the forward
                cur = nxt
                nxt = _state_loads(n0 + NU, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d,
                                   md, bc0, t0, L, lane, N, NU, K, True, BD, TL, TAIL, SC,
                                   BITS)  # fmt: skip
            else:
                cur = _state_loads(n0, A_ptr, B_ptr, C_ptr, hrow, hok, src, sok, offs_d, md,
                                   bc0, t0, L, lane, N, NU, K, True, BD, TL, TAIL, SC,
                                   BITS)  # fmt: skip
            for j in tl.static_range(NU):
                ok = n0 + j < N
                if HELD:  # NU 1: this state's carry joins the ones collected
                    held = (held[0], held[1], held[2], hOut)
                ddt, dus, x, out = _bwd_state(cur, j, n0 + j, ok, ddt, dus, dts, dtus, gy, lane,
                                              up, first_lane, dst, dA_ptr, dB_ptr, dC_ptr,
                                              offs_d, md, bc0, t0, L, N, K, TL, TAIL,
                                              DA_LOG == 0, held, SHIFT)  # fmt: skip
                if HELD:
                    hOut = out[3]
                if DA_LOG > 0:  # NU 1
                    m = n0 % TL
                    p0, p1, p2, p3, p4 = _da_merged(x, p0, p1, p2, p3, p4, m, dA_ptr, offs_d,
                                                    md, n0 - m, lane, N, DA_LOG)  # fmt: skip
        if HELD:  # the carries for the chunk before, state l's from lane l (SHIFT: N - 1 - l)
            sl = N - 1 - lane if SHIFT else lane
            tl.store(dst[:, None] + sl[None, :], hOut, mask=md[:, None] & (lane < N)[None, :])
    return ddt, dus


@triton.jit
def _bwd_lanes_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                      ypre_ptr, ckpt_ptr, dout_ptr, dlast_ptr, dhbuf_ptr, du_ptr, ddelta_ptr,
                      dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, D, L, G, n_chunks,
                      HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr,
                      SOFTPLUS: tl.constexpr, ROUND_GATE: tl.constexpr, N: tl.constexpr,
                      BD: tl.constexpr, K: tl.constexpr, NU: tl.constexpr,
                      PREFETCH: tl.constexpr, BATCH_FAST: tl.constexpr,
                      FAST: tl.constexpr, TL: tl.constexpr = 32,
                      WHOLE: tl.constexpr = False, DA_LOG: tl.constexpr = 0,
                      HELD: tl.constexpr = False, BITS: tl.constexpr = False,
                      IV32: tl.constexpr = False, SHIFT: tl.constexpr = False):  # fmt: skip
    # dhbuf: (2, B, D, N) fp32, a_t dLoss/dh_t at the first step t of the chunk after the one
    # being processed (for the last chunk: dLoss/d(last state) from dlast, or zeros), alternating
    # between the two halves; at the end the half n_chunks % 2 holds dLoss/d(initial state).
    # dA (D, N), dD and d(delta_bias) (D,), dB and dC: fp32 zeros on entry, added to atomically
    offs_d, md, rows, bc0, ck = program_channels(ckpt_ptr, D, L, G, n_chunks, N, BD, BATCH_FAST)
    lane = tl.arange(0, TL)
    if TL < 32:  # the tiles' rows for _load_steps: the first (the same in every lane), flat mask
        batch, pid_d, _grp = program_index(BATCH_FAST)
        rsel = batch.to(tl.int64) * D + pid_d * BD
        msel = pid_d * BD + _flat_channel(BD, TL) < D
    else:
        rsel = rows
        msel = md
    dhb = dhbuf_ptr + rows * N
    half = (tl.num_programs(0) if BATCH_FAST else tl.num_programs(1)) * D * N
    Dv, bias = skip_and_bias(D_ptr, bias_ptr, offs_d, md, HAS_D, HAS_BIAS, BD)
    first_lane = md[:, None] & (lane == 0)[None, :]
    up = tl.minimum(lane + 1, TL - 1)
    dD = tl.zeros((BD, TL), tl.float32)  # per lane, summed at the end
    dbias = tl.zeros((BD, TL), tl.float32)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        hrow, hok = entering_state(ck, h0_ptr + rows * N, c, md, N, HAS_H0)
        t0 = c * (TL * K)
        us = _load_steps(u_ptr, rsel, t0, L, msel, lane, K, BD, TL)
        pres = _load_steps(delta_ptr, rsel, t0, L, msel, lane, K, BD, TL)
        gs = _load_steps(dout_ptr, rsel, t0, L, msel, lane, K, BD, TL)  # dLoss/dout
        if HAS_Z:
            yp = _load_steps(ypre_ptr, rsel, t0, L, msel, lane, K, BD, TL)
            zs = _load_steps(z_ptr, rsel, t0, L, msel, lane, K, BD, TL)
        dts = ()
        dtus = ()
        gy = ()
        dzs = ()
        for k in tl.static_range(K):
            m = md[:, None] & (t0 + lane * K + k < L)[None, :]
            pre = pres[k] + bias[:, None]
            dt = softplus(pre, FAST) if SOFTPLUS else pre
            dt = tl.where(m, dt, 0.0)
            g = gs[k]
            if HAS_Z:
                silu, sg = gate(zs[k], ROUND_GATE, z_ptr.dtype.element_ty)
                dzs = dzs + (g * yp[k] * sg * (1.0 + zs[k] * (1.0 - sg)),)
                g = g * silu  # dLoss/dy
            g = tl.where(m, g, 0.0)
            dD += g * us[k]
            dts = dts + (dt,)
            dtus = dtus + (dt * us[k],)
            gy = gy + (g,)
        if HAS_Z:
            _store_steps(dz_ptr, rsel, t0, L, msel, lane, dzs, K, BD, TL)
        ddt = ()  # sums over the states of dLoss/d(dt A) A
        dus = ()  # and of dLoss/dh B
        for _k in tl.static_range(K):
            ddt = ddt + (tl.zeros_like(dts[0]),)
            dus = dus + (tl.zeros_like(dts[0]),)
        src = tl.where(cc == 0, dlast_ptr + rows * N, dhb + (cc % 2) * half)
        sok = md if HAS_DLAST else md & (cc > 0)
        dst = dhb + ((cc + 1) % 2) * half
        if WHOLE and t0 + TL * K <= L:  # a whole chunk: a copy of the state loop, no mask in time
            ddt, dus = _bwd_states(ddt, dus, dts, dtus, gy, A_ptr, B_ptr, C_ptr, hrow, hok, src,
                                   sok, offs_d, md, bc0, t0, L, lane, up, first_lane, dst, dA_ptr,
                                   dB_ptr, dC_ptr, N, NU, K, PREFETCH, BD, TL, False,
                                   DA_LOG, HELD, BITS, IV32, SHIFT)  # fmt: skip
        else:
            ddt, dus = _bwd_states(ddt, dus, dts, dtus, gy, A_ptr, B_ptr, C_ptr, hrow, hok, src,
                                   sok, offs_d, md, bc0, t0, L, lane, up, first_lane, dst, dA_ptr,
                                   dB_ptr, dC_ptr, N, NU, K, PREFETCH, BD, TL, True,
                                   DA_LOG, HELD, BITS, IV32, SHIFT)  # fmt: skip
        dds = ()
        dss = ()
        # u and delta again (cached), rather than held in registers over the states
        us = _load_steps(u_ptr, rsel, t0, L, msel, lane, K, BD, TL)
        pres = _load_steps(delta_ptr, rsel, t0, L, msel, lane, K, BD, TL)
        for k in tl.static_range(K):
            m = md[:, None] & (t0 + lane * K + k < L)[None, :]
            d = ddt[k] + dus[k] * us[k]
            if SOFTPLUS:
                d = d * tl.sigmoid(pres[k] + bias[:, None])
            d = tl.where(m, d, 0.0)
            dbias += d
            dds = dds + (d,)
            dss = dss + (dus[k] * dts[k] + gy[k] * Dv[:, None],)
        _store_steps(ddelta_ptr, rsel, t0, L, msel, lane, dds, K, BD, TL)
        _store_steps(du_ptr, rsel, t0, L, msel, lane, dss, K, BD, TL)
        tl.debug_barrier()  # the carries just stored are read by other threads next chunk
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, tl.sum(dD, axis=1), mask=md, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, tl.sum(dbias, axis=1), mask=md, sem="relaxed")


@triton.jit
def _fp32_pair_kernel(a_ptr, b_ptr, out_ptr, na, nb, BLOCK: tl.constexpr):
    """a's na elements, then b's nb, into out as fp32: the forward's B and C in one launch."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(a_ptr + i, mask=i < na, other=0.0).to(tl.float32)
    y = tl.load(b_ptr + (i - na), mask=(i >= na) & (i < na + nb), other=0.0).to(tl.float32)
    tl.store(out_ptr + i, tl.where(i < na, x, y), mask=i < na + nb)
