"""The selective scan's forward on CUDA in Gluon (triton's layout-explicit language): one thread
per (channel, state) walking the sequence, no scan across lanes.

The time-parallel forward (``triton_time``) spreads a chunk's steps over a warp's lanes and pays a
scan across them for every state: about 25 instructions per (channel, state, step) on sm_90. Here
a thread holds one (channel, state) pair and a chunk's T steps in registers (layout ``L3``:
channels over warps and lanes, states over lanes, steps inside the thread), so the recurrence
h_t = a_t h_{t-1} + x_t is a plain in-thread scan, one multiply-add a step. What is per channel
(softplus, dt u, the D skip, the gate) runs once per (channel, step) in a layout with one value a
thread (``L_y``: steps over lanes) and reaches the state lanes through shared memory; the output's
sum over the states goes back the same way (``LR``: the states inside each thread, so the sum needs
no shuffles). About 14 instructions per (channel, state, step) on sm_90 in fp32 (16 in bf16),
at 80 registers a thread (``scripts/kernel_resources.py``).

The kernel writes what the time-parallel backward reads: the output, the output before the gate
(when there is one), the state entering every ``TC``-step chunk after the first and the last state.
So it replaces ``_fwd_time_kernel`` alone (``CONFIG["time_fwd"] = "seq"``); the backward is
unchanged. Gluon has no CPU interpreter: this path runs on CUDA only, and is tested there.

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


def seq_block(d_state: int, channels: int) -> tuple[int, int] | None:
    """(warps, channels) of a program for N = d_state and a group of ``channels``, or None where
    this forward does not apply (no gluon; N not a power of two up to 32; no block divides the
    group's channels)."""
    if gluon is None or d_state < 1 or d_state > 32 or d_state & (d_state - 1):
        return None
    for warps in WARPS:
        block = (32 // d_state) * warps
        if channels % block == 0:
            return warps, block
    return None


if gluon is not None:
    LOG2E = gl.constexpr(1.4426950408889634)

    @gluon.jit
    def _combine(a1, x1, a2, x2):
        return a1 * a2, a2 * x1 + x2

    @gluon.jit
    def _second(a, b):
        return b

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
    def fwd_seq_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                       out_ptr, ypre_ptr, ckpt_ptr, last_ptr, D, L, G, n_chunks,
                       HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                       HAS_H0: gl.constexpr, SOFTPLUS: gl.constexpr, ROUND_GATE: gl.constexpr,
                       SAVE_Y: gl.constexpr, N: gl.constexpr, T: gl.constexpr, TC: gl.constexpr,
                       W: gl.constexpr, FAST: gl.constexpr):  # fmt: skip
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
        b = gl.program_id(0)
        grp = gl.program_id(2)
        pid_d = grp * gl.num_programs(1) + gl.program_id(1)
        d_y = pid_d * BD + gl.arange(0, BD, layout=gl.SliceLayout(1, L_y))
        t_y = gl.arange(0, T, layout=gl.SliceLayout(0, L_y))
        md_y = d_y < D
        rows_y = b.to(gl.int64) * D + d_y
        d_s = pid_d * BD + gl.arange(0, BD, layout=gl.SliceLayout(1, L_dn))
        n_s = gl.arange(0, N, layout=gl.SliceLayout(0, L_dn))
        m_dn = (d_s < D)[:, None] & (n_s < N)[None, :]
        st_off = (b.to(gl.int64) * D + d_s)[:, None] * N + n_s[None, :]
        A2 = gl.load(A_ptr + d_s[:, None] * N + n_s[None, :], mask=m_dn, other=0.0) * LOG2E
        n_b = gl.arange(0, N, layout=gl.SliceLayout(1, L_nt))
        t_b = gl.arange(0, T, layout=gl.SliceLayout(0, L_nt))
        first = gl.expand_dims(gl.expand_dims(t_b, 0), 0) == 0  # (1, 1, T)
        bc0 = (b.to(gl.int64) * G + grp) * N * L
        if HAS_D:
            Dv = gl.load(D_ptr + d_y, mask=md_y, other=0.0)
        else:
            Dv = gl.zeros([BD], gl.float32, gl.SliceLayout(1, L_y))
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_y, mask=md_y, other=0.0)
        else:
            bias = gl.zeros([BD], gl.float32, gl.SliceLayout(1, L_y))
        if HAS_H0:
            h = gl.load(h0_ptr + st_off, mask=m_dn, other=0.0)
        else:
            h = gl.zeros([BD, N], gl.float32, L_dn)
        ck = ckpt_ptr + (b.to(gl.int64) * D + d_s)[:, None] * (n_chunks * N) + n_s[None, :]
        PER: gl.constexpr = TC // T
        for j in range(gl.cdiv(L, T)):
            t = j * T + t_y
            m = md_y[:, None] & (t < L)[None, :]
            offs = rows_y[:, None] * L + t[None, :]
            u = gl.load(u_ptr + offs, mask=m, other=0.0).to(gl.float32)
            pre = gl.load(delta_ptr + offs, mask=m, other=0.0).to(gl.float32) + bias[:, None]
            dt = _softplus(pre, FAST) if SOFTPLUS else pre
            dt = gl.where(m, dt, 0.0)  # steps past L: a = 1, x = 0
            dt_s = gl.convert_layout(dt, L_dt)
            dtu_s = gl.convert_layout(dt * u, L_dt)
            tb = j * T + t_b
            m_nt = (n_b < N)[:, None] & (tb < L)[None, :]
            offs_nt = bc0 + n_b[:, None] * L + tb[None, :]
            Bt = gl.load(B_ptr + offs_nt, mask=m_nt, other=0.0).to(gl.float32)
            Ct = gl.load(C_ptr + offs_nt, mask=m_nt, other=0.0).to(gl.float32)
            a = gl.exp2(gl.expand_dims(dt_s, 1) * gl.expand_dims(A2, 2))
            x = gl.expand_dims(dtu_s, 1) * gl.expand_dims(Bt, 0)
            # the carried state folded into the first step, so the scan's products of a go unused
            x = gl.where(first, a * gl.expand_dims(h, 2) + x, x)
            _a, hs = gl.associative_scan((a, x), 2, _combine)
            h = gl.reduce(hs, 2, _second)  # the chunk's last step
            y = gl.sum(gl.convert_layout(hs * gl.expand_dims(Ct, 0), LR), axis=1)
            y += Dv[:, None] * u
            if HAS_Z:
                if SAVE_Y:
                    gl.store(ypre_ptr + offs, y.to(ypre_ptr.dtype.element_ty), mask=m)
                zt = gl.load(z_ptr + offs, mask=m, other=0.0).to(gl.float32)
                silu = zt / (1.0 + gl.exp2(-zt * LOG2E))
                if ROUND_GATE:
                    silu = silu.to(z_ptr.dtype.element_ty).to(gl.float32)
                y = y * silu
            gl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
            # the state entering checkpoint chunk c, where step (j + 1) T starts it
            c = (j + 1) // PER
            gl.store(ck + c * N, h, mask=m_dn & ((j + 1) % PER == 0) & (c < n_chunks))
        gl.store(last_ptr + st_off, h, mask=m_dn)
