"""The selective scan's forward and backward on CUDA in Gluon (triton's layout-explicit
language): one thread per (channel, state) walking the sequence, no scan across lanes.

The time-parallel kernels (``triton_time``) spread a chunk's steps over a warp's lanes and pay a
scan across them for every state. Here a thread holds one (channel, state) pair and a chunk's T
steps in registers (layout ``L3``: channels over warps and lanes, states over lanes, steps inside
the thread), so the recurrence h_t = a_t h_{t-1} + x_t is a plain in-thread scan, one multiply-add
a step. What is per channel (softplus, dt u, the D skip, the gate) runs once per (channel, step) in
a layout with one value a thread (``L_y``: steps over lanes) and reaches the state lanes through
shared memory; the sums over the states go back the same way (``LR``: the states inside each
thread, so the sums need no shuffles).

``fwd_seq_kernel`` writes what a backward reads: the output, the output before the gate (when
there is one), the state entering every ``TC``-step chunk after the first and the last state.
Before the time-parallel backward (``CONFIG["time_fwd"] = "seq"``) TC is their chunk; before
``bwd_seq_kernel`` (``CONFIG["kernel"] = "seq"``) it is T, and the backward recomputes each
chunk's states from its checkpoint and runs the adjoint over register columns. PREFETCH loads
the next chunk's tiles before this chunk's work.

About half the time kernels' instructions on sm_90 (``scripts/kernel_resources.py``), but slower
on H100 and H200 (docs/benchmarks.md): latency-bound, with few bytes in flight per warp and, in
the backward, registers for a small fraction of an SM's warps. Off by default. Gluon has no CPU
interpreter: this path runs on CUDA only, and is tested there.

Shape key as ``triton_kernel``: B batch, D channels, G groups of B/C (E = D / G each), L length,
N state (a power of two up to 32: 32 / N channels a warp).
"""

from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:  # triton before 3.4: no gluon, the time-parallel forward stays
    gluon = None

# warps a program, largest first: the first whose channels divide one group's
WARPS = (4, 2, 1)


def seq_block(
    d_state: int, channels: int, warps: tuple[int, ...] = WARPS
) -> tuple[int, int] | None:
    """(warps, channels) of a program for N = d_state and a group of ``channels``: the first of
    ``warps`` whose block divides the group, else the last (the group's last block then partly
    masked); None where these kernels do not apply (no gluon; N not a power of two up to 32)."""
    if gluon is None or d_state < 1 or d_state > 32 or d_state & (d_state - 1):
        return None
    for w in warps:
        block = (32 // d_state) * w
        if channels % block == 0:
            return w, block
    return warps[-1], (32 // d_state) * warps[-1]


if gluon is not None:
    LOG2E = gl.constexpr(1.4426950408889634)

    @gluon.jit
    def _combine(a1, x1, a2, x2):
        return a1 * a2, a2 * x1 + x2

    @gluon.jit
    def _softplus(x, FAST: gl.constexpr):
        """As ``triton_kernel.softplus``."""
        if FAST:
            e = gl.exp2(x * LOG2E)
            lg = gl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [1.0 + e],
                                           dtype=gl.float32, is_pure=True, pack=1)  # fmt: skip
            small = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - 0.25 * e)))
            return gl.where(x > 20.0, x, gl.where(x < -4.0, small, lg * 0.6931471805599453))
        else:
            return gl.where(x <= 20.0, gl.log(1.0 + gl.exp(x)), x)

    @gluon.jit
    def _tile_at(j, rows_y, t_y, md_y, L, T: gl.constexpr):
        """(offsets, mask) of the (channel, step) tile of chunk j; masked past L and before 0
        (a chunk loaded ahead of the first or after the last)."""
        t = j * T + t_y
        return rows_y[:, None] * L + t[None, :], md_y[:, None] & ((t < L) & (t >= 0))[None, :]

    @gluon.jit
    def _row_loads(j, ptrs, rows_y, t_y, md_y, L, T: gl.constexpr):
        """The (channel, step) tiles of chunk j of every pointer in ``ptrs``, as stored (zeros
        where masked): what a kernel issues a chunk ahead of using it (PREFETCH)."""
        offs, m = _tile_at(j, rows_y, t_y, md_y, L, T)
        out = ()
        for i in gl.static_range(len(ptrs)):
            out = out + (gl.load(ptrs[i] + offs, mask=m, other=0.0),)
        return out

    @gluon.jit
    def _bc_tile_at(j, bc0, n_b, t_b, L, N: gl.constexpr, T: gl.constexpr):
        """(offsets, mask) of chunk j's (state, step) tile of B or C (and of dB, dC); masked
        past L and before 0."""
        tb = j * T + t_b
        m_nt = (n_b < N)[:, None] & ((tb < L) & (tb >= 0))[None, :]
        return bc0 + n_b[:, None] * L + tb[None, :], m_nt

    @gluon.jit
    def _bc_loads(j, B_ptr, C_ptr, bc0, n_b, t_b, L, N: gl.constexpr, T: gl.constexpr):
        """B and C over chunk j, (state, step) tiles as stored; zeros past L and before 0."""
        offs_nt, m_nt = _bc_tile_at(j, bc0, n_b, t_b, L, N, T)
        return gl.load(B_ptr + offs_nt, mask=m_nt, other=0.0), gl.load(
            C_ptr + offs_nt, mask=m_nt, other=0.0
        )

    @gluon.jit
    def _entering(j, ck, h0_ptr, st_off, m_dn, N: gl.constexpr, HAS_H0: gl.constexpr):
        """The state entering chunk j, (channel, state): its checkpoint, or for the first chunk
        the initial state (zeros without one); zeros for j < 0 (a chunk loaded ahead)."""
        if HAS_H0:
            return gl.load(gl.where(j > 0, ck + j * N, h0_ptr + st_off), mask=m_dn & (j >= 0),
                           other=0.0)  # fmt: skip
        else:
            return gl.load(ck + j * N, mask=m_dn & (j > 0), other=0.0)

    @gluon.jit
    def _chunk_dt(u, delta, m, bias, SOFTPLUS: gl.constexpr, FAST: gl.constexpr):
        """As ``triton_kernel.chunk_dt``, from the loaded tiles: u, delta + delta_bias and dt of
        a (channel, step) tile in fp32; dt = 0 where masked (steps past L: a = 1, x = 0)."""
        pre = delta.to(gl.float32) + bias[:, None]
        dt = _softplus(pre, FAST) if SOFTPLUS else pre
        return u.to(gl.float32), pre, gl.where(m, dt, 0.0)

    @gluon.jit
    def _gate(zt, ROUND: gl.constexpr, dtype: gl.constexpr):
        """As ``triton_kernel.gate``: silu(z) and sigmoid(z) in fp32, silu rounded to ``dtype``
        when ROUND; one function, so the forward and the backward gate alike."""
        sg = 1.0 / (1.0 + gl.exp2(-zt * LOG2E))
        silu = zt * sg
        if ROUND:
            silu = silu.to(dtype).to(gl.float32)
        return silu, sg

    @gluon.jit
    def _program(D_ptr, bias_ptr, D, L, G, E, N: gl.constexpr, T: gl.constexpr,
                 BD: gl.constexpr, L_y: gl.constexpr, L_dn: gl.constexpr, L_nt: gl.constexpr,
                 HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr):  # fmt: skip
        """This program's indices (grid (batch, channel blocks of one group, groups)): its
        (channel, step) channels, mask, rows and steps; its (channel, state) channels, states,
        mask and rows; its (state, step) indices and B/C group's start; D and delta_bias (zeros
        without them)."""
        b = gl.program_id(0)
        grp = gl.program_id(2)
        e0 = gl.program_id(1) * BD  # the block's first channel within its group of E
        e_y = e0 + gl.arange(0, BD, layout=gl.SliceLayout(1, L_y))
        md_y = e_y < E
        d_y = grp * E + e_y
        rows_y = b.to(gl.int64) * D + d_y
        t_y = gl.arange(0, T, layout=gl.SliceLayout(0, L_y))
        e_s = e0 + gl.arange(0, BD, layout=gl.SliceLayout(1, L_dn))
        d_s = grp * E + e_s
        n_s = gl.arange(0, N, layout=gl.SliceLayout(0, L_dn))
        m_dn = (e_s < E)[:, None] & (n_s < N)[None, :]
        rows_s = b.to(gl.int64) * D + d_s
        n_b = gl.arange(0, N, layout=gl.SliceLayout(1, L_nt))
        t_b = gl.arange(0, T, layout=gl.SliceLayout(0, L_nt))
        bc0 = (b.to(gl.int64) * G + grp) * N * L
        if HAS_D:
            Dv = gl.load(D_ptr + d_y, mask=md_y, other=0.0)
        else:
            Dv = gl.zeros([BD], gl.float32, gl.SliceLayout(1, L_y))
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_y, mask=md_y, other=0.0)
        else:
            bias = gl.zeros([BD], gl.float32, gl.SliceLayout(1, L_y))
        return d_y, md_y, rows_y, t_y, d_s, n_s, m_dn, rows_s, n_b, t_b, bc0, Dv, bias

    @gluon.jit
    def fwd_seq_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                       out_ptr, ypre_ptr, ckpt_ptr, last_ptr, D, L, G, E, n_chunks,
                       HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                       HAS_H0: gl.constexpr, SOFTPLUS: gl.constexpr, ROUND_GATE: gl.constexpr,
                       SAVE_Y: gl.constexpr, N: gl.constexpr, T: gl.constexpr, TC: gl.constexpr,
                       W: gl.constexpr, PREFETCH: gl.constexpr, FAST: gl.constexpr):  # fmt: skip
        # grid (batch, channel blocks of one group, groups); ckpt (B, D, n_chunks, N) fp32, slot
        # c >= 1 the state entering chunk c of TC steps; last (B, D, N)
        CPW: gl.constexpr = 32 // N  # channels a warp
        BD: gl.constexpr = CPW * W
        L3: gl.constexpr = gl.BlockedLayout([1, 1, T], [CPW, N, 1], [W, 1, 1], [2, 1, 0])
        L_dn: gl.constexpr = gl.SliceLayout(2, L3)  # (channel, state): one a thread
        L_dt: gl.constexpr = gl.SliceLayout(1, L3)  # (channel, step): a channel's, each state lane
        L_nt: gl.constexpr = gl.SliceLayout(0, L3)  # (state, step): a state's, each channel lane
        LR: gl.constexpr = gl.BlockedLayout([1, N, 1], [32 // T, 1, T], [W, 1, 1], [2, 1, 0])
        L_y: gl.constexpr = gl.SliceLayout(1, LR)  # (channel, step): one a thread
        d_y, md_y, rows_y, t_y, d_s, n_s, m_dn, rows_s, n_b, t_b, bc0, Dv, bias = _program(
            D_ptr, bias_ptr, D, L, G, E, N, T, BD, L_y, L_dn, L_nt, HAS_D, HAS_BIAS
        )
        st_off = rows_s[:, None] * N + n_s[None, :]
        A2 = gl.load(A_ptr + d_s[:, None] * N + n_s[None, :], mask=m_dn, other=0.0) * LOG2E
        first = gl.expand_dims(gl.expand_dims(t_b, 0), 0) == 0  # (1, 1, T)
        if HAS_H0:
            h = gl.load(h0_ptr + st_off, mask=m_dn, other=0.0)
        else:
            h = gl.zeros([BD, N], gl.float32, L_dn)
        ck = ckpt_ptr + rows_s[:, None] * (n_chunks * N) + n_s[None, :]
        PER: gl.constexpr = TC // T
        # PREFETCH: 1, the next chunk's (channel, step) tiles are loaded before this chunk's
        # work; 2, its B and C too; 0, each chunk's loads where it starts
        rows_in = (u_ptr, delta_ptr, z_ptr) if HAS_Z else (u_ptr, delta_ptr)
        nxt = _row_loads(0, rows_in, rows_y, t_y, md_y, L, T)
        nxt_bc = _bc_loads(0, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
        for j in range(gl.cdiv(L, T)):
            if PREFETCH >= 1:
                cur = nxt
                nxt = _row_loads(j + 1, rows_in, rows_y, t_y, md_y, L, T)
            else:
                cur = _row_loads(j, rows_in, rows_y, t_y, md_y, L, T)
            if PREFETCH >= 2:
                cur_bc = nxt_bc
                nxt_bc = _bc_loads(j + 1, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
            else:
                cur_bc = _bc_loads(j, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
            offs, m = _tile_at(j, rows_y, t_y, md_y, L, T)
            u, _pre, dt = _chunk_dt(cur[0], cur[1], m, bias, SOFTPLUS, FAST)
            dt_s = gl.convert_layout(dt, L_dt)
            dtu_s = gl.convert_layout(dt * u, L_dt)
            Bt = cur_bc[0].to(gl.float32)
            Ct = cur_bc[1].to(gl.float32)
            a = gl.exp2(gl.expand_dims(dt_s, 1) * gl.expand_dims(A2, 2))
            x = gl.expand_dims(dtu_s, 1) * gl.expand_dims(Bt, 0)
            # the carried state folded into the first step, so the scan's products of a go unused
            x = gl.where(first, a * gl.expand_dims(h, 2) + x, x)
            _a, hs = gl.associative_scan((a, x), 2, _combine)
            h = gl.convert_layout(_cols(hs, T)[T - 1], L_dn, assert_trivial=True)  # last step
            y = gl.sum(gl.convert_layout(hs * gl.expand_dims(Ct, 0), LR), axis=1)
            y += Dv[:, None] * u
            if HAS_Z:
                if SAVE_Y:
                    gl.store(ypre_ptr + offs, y.to(ypre_ptr.dtype.element_ty), mask=m)
                silu, _sg = _gate(cur[2].to(gl.float32), ROUND_GATE, z_ptr.dtype.element_ty)
                y = y * silu
            gl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
            # the state entering checkpoint chunk c, where step (j + 1) T starts it
            c = (j + 1) // PER
            gl.store(ck + c * N, h, mask=m_dn & ((j + 1) % PER == 0) & (c < n_chunks))
        gl.store(last_ptr + st_off, h, mask=m_dn)

    @gluon.jit
    def _cols(x, T: gl.constexpr):
        """The T in-thread steps of a (BD, N, T) tile as a tuple of (BD, N) tensors, first to
        last: register moves, no data between threads."""
        if T == 1:
            return (gl.reshape(x, [x.shape[0], x.shape[1]]),)
        else:
            halves = gl.reshape(x, [x.shape[0], x.shape[1], 2, T // 2]).permute(0, 1, 3, 2)
            lo, hi = gl.split(halves)
            return _cols(lo, T // 2) + _cols(hi, T // 2)

    @gluon.jit
    def _tile(cs, T: gl.constexpr):
        """Inverse of ``_cols`` (in a layout of the same registers; convert it to the tile's own
        layout with ``assert_trivial``)."""
        if T == 1:
            return gl.reshape(cs[0], [cs[0].shape[0], cs[0].shape[1], 1])
        else:
            pair = gl.join(_tile(cs[: T // 2], T // 2), _tile(cs[T // 2 :], T // 2))
            return pair.permute(0, 1, 3, 2).reshape([cs[0].shape[0], cs[0].shape[1], T])

    @gluon.jit
    def bwd_seq_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                       ypre_ptr, ckpt_ptr, dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr,
                       dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, dh0_ptr, D, L, G, E, n_ck,
                       HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                       HAS_H0: gl.constexpr, HAS_DLAST: gl.constexpr, SOFTPLUS: gl.constexpr,
                       ROUND_GATE: gl.constexpr, N: gl.constexpr, T: gl.constexpr,
                       W: gl.constexpr, PREFETCH: gl.constexpr, FAST: gl.constexpr):  # fmt: skip
        # ckpt (B, D, n_ck, N) fp32, slot j >= 1 the state entering chunk j of T steps (the
        # forward with CK = T); dA (D, N), dD, d(delta_bias) (D,), dB, dC (B, G, N, L) fp32 zeros
        # on entry, summed into atomically; dh0 (B, D, N) written when HAS_H0
        CPW: gl.constexpr = 32 // N
        BD: gl.constexpr = CPW * W
        L3: gl.constexpr = gl.BlockedLayout([1, 1, T], [CPW, N, 1], [W, 1, 1], [2, 1, 0])
        L_dn: gl.constexpr = gl.SliceLayout(2, L3)
        L_dt: gl.constexpr = gl.SliceLayout(1, L3)
        L_nt: gl.constexpr = gl.SliceLayout(0, L3)
        LR: gl.constexpr = gl.BlockedLayout([1, N, 1], [32 // T, 1, T], [W, 1, 1], [2, 1, 0])
        L_y: gl.constexpr = gl.SliceLayout(1, LR)
        d_y, md_y, rows_y, t_y, d_s, n_s, m_dn, rows_s, n_b, t_b, bc0, Dv, bias = _program(
            D_ptr, bias_ptr, D, L, G, E, N, T, BD, L_y, L_dn, L_nt, HAS_D, HAS_BIAS
        )
        st_off = rows_s[:, None] * N + n_s[None, :]
        A = gl.load(A_ptr + d_s[:, None] * N + n_s[None, :], mask=m_dn, other=0.0)
        A2 = A * LOG2E
        A3 = gl.expand_dims(A, 2)
        ck = ckpt_ptr + rows_s[:, None] * (n_ck * N) + n_s[None, :]
        if HAS_DLAST:  # carry: dLoss/dh at the step after the chunk, times that step's decay
            carry = gl.load(dlast_ptr + st_off, mask=m_dn, other=0.0)
        else:
            carry = gl.zeros([BD, N], gl.float32, L_dn)
        dA = gl.zeros([BD, N], gl.float32, L_dn)
        dD = gl.zeros([BD, T], gl.float32, L_y)
        dbias = gl.zeros([BD, T], gl.float32, L_y)
        n_t = gl.cdiv(L, T)
        # PREFETCH as the forward's: the chunk before's tiles (and state entering it) are loaded
        # ahead of this chunk's work
        rows_in = (u_ptr, delta_ptr, dout_ptr, ypre_ptr, z_ptr) if HAS_Z else (
            u_ptr, delta_ptr, dout_ptr)  # fmt: skip
        nxt = _row_loads(n_t - 1, rows_in, rows_y, t_y, md_y, L, T)
        nxt_h = _entering(n_t - 1, ck, h0_ptr, st_off, m_dn, N, HAS_H0)
        nxt_bc = _bc_loads(n_t - 1, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
        for jj in range(n_t):
            j = n_t - 1 - jj
            if PREFETCH >= 1:
                cur = nxt
                h_in = nxt_h
                nxt = _row_loads(j - 1, rows_in, rows_y, t_y, md_y, L, T)
                nxt_h = _entering(j - 1, ck, h0_ptr, st_off, m_dn, N, HAS_H0)
            else:
                cur = _row_loads(j, rows_in, rows_y, t_y, md_y, L, T)
                h_in = _entering(j, ck, h0_ptr, st_off, m_dn, N, HAS_H0)
            if PREFETCH >= 2:
                cur_bc = nxt_bc
                nxt_bc = _bc_loads(j - 1, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
            else:
                cur_bc = _bc_loads(j, B_ptr, C_ptr, bc0, n_b, t_b, L, N, T)
            offs, m = _tile_at(j, rows_y, t_y, md_y, L, T)
            u, pre, dt = _chunk_dt(cur[0], cur[1], m, bias, SOFTPLUS, FAST)
            g = cur[2].to(gl.float32)
            if HAS_Z:
                yp = cur[3].to(gl.float32)
                zt = cur[4].to(gl.float32)
                silu, sg = _gate(zt, ROUND_GATE, z_ptr.dtype.element_ty)
                gl.store(dz_ptr + offs, (g * yp * sg * (1.0 + zt * (1.0 - sg))).to(
                    dz_ptr.dtype.element_ty), mask=m)  # fmt: skip
                g = g * silu  # dLoss/dy
            g = gl.where(m, g, 0.0)
            dD += g * u
            dtu = dt * u
            dt3 = gl.expand_dims(gl.convert_layout(dt, L_dt), 1)
            dtu3 = gl.expand_dims(gl.convert_layout(dtu, L_dt), 1)
            g3 = gl.expand_dims(gl.convert_layout(g, L_dt), 1)
            B3 = gl.expand_dims(cur_bc[0].to(gl.float32), 0)
            C3 = gl.expand_dims(cur_bc[1].to(gl.float32), 0)
            a_cols = _cols(gl.exp2(dt3 * gl.expand_dims(A2, 2)), T)
            x_cols = _cols(dtu3 * B3, T)
            col: gl.constexpr = a_cols[0].type.layout  # the columns' (same registers as L_dn)
            h = gl.convert_layout(h_in, col, assert_trivial=True)
            hs = ()
            for k in gl.static_range(T):
                h = a_cols[k] * h + x_cols[k]
                hs = hs + (h,)
            gc_cols = _cols(g3 * C3, T)
            dhs = ()
            c = gl.convert_layout(carry, col, assert_trivial=True)
            for i in gl.static_range(T):
                dh = gc_cols[T - 1 - i] + c
                dhs = (dh,) + dhs
                c = a_cols[T - 1 - i] * dh
            carry = gl.convert_layout(c, L_dn, assert_trivial=True)
            H = gl.convert_layout(_tile(hs, T), L3, assert_trivial=True)
            dH = gl.convert_layout(_tile(dhs, T), L3, assert_trivial=True)
            # dLoss/d(dt A) = dh_t a_t h_{t-1} = dh_t (h_t - x_t)
            dlog = dH * (H - dtu3 * B3)
            dA += gl.sum(dlog * dt3, axis=2)
            s_a = gl.sum(gl.convert_layout(dlog * A3, LR), axis=1)  # over the states
            s_b = gl.sum(gl.convert_layout(dH * B3, LR), axis=1)
            ddt = s_a + s_b * u
            if SOFTPLUS:
                ddt = ddt / (1.0 + gl.exp2(-pre * LOG2E))
            ddt = gl.where(m, ddt, 0.0)
            dbias += ddt
            gl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
            gl.store(du_ptr + offs, (s_b * dt + g * Dv[:, None]).to(du_ptr.dtype.element_ty),
                     mask=m)  # fmt: skip
            # dB, dC: summed over the program's channels, then one atomic add per (state, step)
            offs_nt, m_nt = _bc_tile_at(j, bc0, n_b, t_b, L, N, T)
            gl.atomic_add(dB_ptr + offs_nt, gl.sum(dH * dtu3, axis=0), mask=m_nt, sem="relaxed")
            gl.atomic_add(dC_ptr + offs_nt, gl.sum(H * g3, axis=0), mask=m_nt, sem="relaxed")
        gl.atomic_add(dA_ptr + d_s[:, None] * N + n_s[None, :], dA, mask=m_dn, sem="relaxed")
        if HAS_D:
            gl.atomic_add(dD_ptr + d_y, gl.sum(dD, axis=1), mask=md_y, sem="relaxed")
        if HAS_BIAS:
            gl.atomic_add(dbias_ptr + d_y, gl.sum(dbias, axis=1), mask=md_y, sem="relaxed")
        if HAS_H0:  # dLoss/dh_{-1} = a_0 dLoss/dh_0
            gl.store(dh0_ptr + st_off, carry, mask=m_dn)
