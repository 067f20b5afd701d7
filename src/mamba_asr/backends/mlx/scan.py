"""The selective scan in MLX: chunked and vectorized offline, one step for streaming.

Shape key
    B: batch, L: frames, D: channels (d_inner), N: state size (d_state), T: frames of a chunk.

The layout is channels-last, (B, L, D), what MLX's linear layers produce, so the block needs
no transposes; otherwise the arguments are those of ``mamba_asr.ops.selective_scan``'s
reference (``selective_scan_ref``)::

    dt_t = softplus(delta_t + delta_bias)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        (h_{-1} = initial_state or 0)
    y_t  = (<h_t, C_t> + D * u_t) * silu(z_t)

``selective_scan`` solves the recurrence chunk by chunk (``chunk`` frames, 64 by default, as
the PyTorch chunked path): within a chunk by log2(T) doubling steps (Hillis-Steele) on
(B, T, D, N) arrays, the state carried from one chunk to the next, so there is a Python loop
per chunk and per doubling level, never per frame. Every factor exp(dt * A) is <= 1, so the
products only shrink: nothing overflows. ``selective_step`` is the one-frame update of
streaming.

Operation counts, per chunk of T frames (E = B * D * N elements per frame): the sequential
recurrence is T dependent steps of 2E flops (T array operations of E elements, each a kernel
launch in MLX); the doubling scan is ceil(log2 T) levels of about 3 * T * E flops (b += a *
shift(b), a *= shift(a)) in 4-5 array operations per level, so 6 levels for T = 64 instead of
64 steps: ~3x the flops in ~10x fewer operations, each on 64x more elements. ``mx.compile``
(``compiled=True``, the default) fuses each level's multiply, add and concatenation into fewer
kernels, which removes intermediate (B, T, D, N) arrays: the level's memory traffic, not its
flops, is what costs on a GPU.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

__all__ = ["DEFAULT_CHUNK", "linear_scan", "selective_scan", "selective_step"]

DEFAULT_CHUNK = 64


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
    chunk: int = DEFAULT_CHUNK,
    compiled: bool = True,
) -> tuple[mx.array, mx.array]:
    """u, delta, z: (B, L, D); A: (D, N); B, C: (B, L, N); D, delta_bias: (D,);
    initial_state: (B, D, N) or None. Returns y (B, L, D) and the last state h (B, D, N), fp32.
    """
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
