"""The selective scan in MLX: chunked and vectorized offline, one step for streaming.

Shape key
    B: batch, L: frames, D: channels (d_inner), N: state size (d_state), T: frames of a chunk.

The layout is channels-last, (B, L, D), what MLX's linear layers produce, so the block needs
no transposes; otherwise the arguments are those of ``mamba_asr.ops.selective_scan``'s
reference (``selective_scan_ref``)::

    dt_t = softplus(delta_t + delta_bias)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        (h_{-1} = initial_state or 0)
    y_t  = (<h_t, C_t> + D * u_t) * silu(z_t)

``selective_scan`` solves the recurrence chunk by chunk (``chunk`` frames, ``CHUNK`` = 64 by
default, as the PyTorch chunked path): within a chunk by log2(T) doubling steps (Hillis-Steele)
on (B, T, D, N) arrays, the state carried from one chunk to the next, so there is a Python loop
per chunk and per doubling level, never per frame. Every factor exp(dt * A) is <= 1, so the
products only shrink: nothing overflows. ``selective_step`` is the one-frame update of
streaming (a chunk of one encoder frame).

Why this formulation, by operation counts (E = B * D * N elements of a frame's state; the
bundled model: E = 512 * 16 = 8192 per stream, T = 64, L = 375 frames in 30 s, 12 layers):

- sequential (a Python loop over frames, as ``selective_step``): 2 flops per element per
  frame, 2 * L * E in all, but about 5 array operations per frame (exp, two products, a sum,
  the output's reduction): 5 * L = 1875 operations per layer, 22500 per 30 s. In MLX each is a
  graph node and, on a GPU, a kernel launch of a few microseconds on a tiny (E,) array.
- doubling within chunks: per level about 3 flops per element of the chunk (b += a * shift(b),
  a *= shift(a)), so 3 * log2(T) * L * E in all: 9x the flops at T = 64 (6x at T = 16), in about
  6 array operations per level on (T, E) arrays: 6 * 6 = 36 per chunk, 6 chunks per layer:
  ~220 operations per layer, 8x fewer than sequential, each 64x larger. On a GPU the extra
  flops are cheap (E * T = 0.5 M elements per operation) and the launches are what is saved.
- ``mx.compile`` (``compiled``, ``COMPILED`` = True by default) traces a chunk's levels once per
  chunk length and fuses each level's elementwise product and sum: about half the kernels, and
  no intermediate (T, E) array per product (memory traffic, which bounds elementwise work on
  a GPU). Measured on Linux (mlx[cpu], one core): no difference (0.22 s either way for a
  30 s layer; a CPU is bound by the arithmetic); its benefit on Metal is the part that only a
  Mac can measure (``benchmarks/mlx_rtf.py --scan-compile off``).

``CHUNK`` and ``COMPILED`` are module settings (what ``None`` arguments mean), so a benchmark
can change them for a whole model.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

__all__ = ["CHUNK", "COMPILED", "linear_scan", "selective_scan", "selective_step"]

CHUNK = 64
COMPILED = True


def softplus(x: mx.array) -> mx.array:
    """log(1 + exp(x)), stable for large |x|."""
    return mx.logaddexp(x, mx.zeros_like(x))


def linear_scan(a: mx.array, b: mx.array, h0: mx.array | None) -> mx.array:
    """Every h_t of h_t = a_t * h_{t-1} + b_t along axis 1 (h_{-1} = h0).

    a, b: (B, T, D, N); h0: (B, D, N) or None (zeros). Returns (B, T, D, N).
    """
    length = a.shape[1]
    k = 1
    while k < length:
        b = mx.concatenate([b[:, :k], b[:, k:] + a[:, k:] * b[:, :-k]], axis=1)
        if 2 * k < length or h0 is not None:  # the last level needs no products of a
            a = mx.concatenate([a[:, :k], a[:, k:] * a[:, :-k]], axis=1)
        k *= 2
    return b if h0 is None else b + a * h0[:, None]


@lru_cache(maxsize=2)
def _compiled_scan(with_h0: bool):
    if with_h0:
        return mx.compile(lambda a, b, h0: linear_scan(a, b, h0))
    return mx.compile(lambda a, b: linear_scan(a, b, None))


def selective_scan(
    u: mx.array,
    delta: mx.array,
    A: mx.array,
    B: mx.array,
    C: mx.array,
    D: mx.array,
    z: mx.array,
    delta_bias: mx.array,
    initial_state: mx.array | None = None,
    chunk: int | None = None,
    compiled: bool | None = None,
) -> tuple[mx.array, mx.array]:
    """u, delta, z: (B, L, D); A: (D, N); B, C: (B, L, N); D, delta_bias: (D,);
    initial_state: (B, D, N) or None; chunk, compiled: None for ``CHUNK``, ``COMPILED``.
    Returns y (B, L, D) and the last state h (B, D, N), fp32.
    """
    chunk = CHUNK if chunk is None else chunk
    compiled = COMPILED if compiled is None else compiled
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    batch, length, dim = u.shape
    dt = softplus(delta + delta_bias)  # (B, L, D)
    h = initial_state
    if h is None:
        h = mx.zeros((batch, dim, A.shape[1]), dtype=mx.float32)
    ys = []
    for start in range(0, length, chunk):
        dt_c, u_c = dt[:, start : start + chunk], u[:, start : start + chunk]  # (B, T, D)
        a = mx.exp(dt_c[..., None] * A)  # (B, T, D, N)
        b = (dt_c * u_c)[..., None] * B[:, start : start + chunk, None, :]  # (B, T, D, N)
        hs = _compiled_scan(True)(a, b, h) if compiled else linear_scan(a, b, h)
        ys.append((hs * C[:, start : start + chunk, None, :]).sum(-1))  # (B, T, D)
        h = hs[:, -1]  # (B, D, N)
    y = mx.concatenate(ys, axis=1) if ys else mx.zeros((batch, 0, dim))
    y = (y + u * D) * (z * mx.sigmoid(z))
    return y, h


def selective_step(
    u: mx.array,
    delta: mx.array,
    A: mx.array,
    B: mx.array,
    C: mx.array,
    D: mx.array,
    z: mx.array,
    delta_bias: mx.array,
    state: mx.array,
) -> tuple[mx.array, mx.array]:
    """One frame: u, delta, z: (B, D); B, C: (B, N); state (B, D, N) -> y (B, D), the new state."""
    dt = softplus(delta + delta_bias)  # (B, D)
    h = mx.exp(dt[..., None] * A) * state + (dt * u)[..., None] * B[:, None, :]  # (B, D, N)
    y = (h * C[:, None, :]).sum(-1) + u * D  # (B, D)
    return y * (z * mx.sigmoid(z)), h
