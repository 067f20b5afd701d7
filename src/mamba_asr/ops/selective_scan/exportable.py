"""Selective scan for exported graphs: one ``scan`` op (ONNX), or one step per frame (Core ML).

The recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = <h_t, C_t> runs through
PyTorch's ``scan`` higher-order operator, which ``torch.export`` keeps as one node and the ONNX
exporter turns into an ONNX ``Scan`` (its body: one multiply-add and one reduction over N).
Nothing is unrolled and no shape is fixed, so one exported graph takes chunks of any length,
at the sequential scan's cost. Eagerly (tests) the operator runs the same steps in a loop.

``ssm_scan_unrolled`` computes the same steps with a Python loop over the frames, which export
writes out as L copies of the step: a graph of one fixed chunk length with no control flow,
for converters that take no ``scan`` (coremltools). Meant for short chunks (a few encoder
frames): the graph grows with L.

Shape key: B batch, G groups of B/C, E channels per group (D = G * E), L length, N state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssm_scan_exportable", "ssm_scan_unrolled"]


def _terms(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """Per-step decay and input, (L, B, G, E, N) each, C (L, B, G, 1, N), and h0 (B, G, E, N)."""
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (B, 1, N, L)
    groups, n = B.shape[1], A.shape[1]
    e = dim // groups
    dt5 = dt.reshape(batch, groups, e, length, 1)  # (B, G, E, L, 1)
    decay = torch.exp(dt5 * A.reshape(groups, e, 1, n))  # (B, G, E, L, N)
    inputs = (dt5 * u.reshape(batch, groups, e, length, 1)) * B.transpose(-1, -2).unsqueeze(2)
    xs = (
        decay.permute(3, 0, 1, 2, 4),  # (L, B, G, E, N)
        inputs.permute(3, 0, 1, 2, 4),  # (L, B, G, E, N)
        C.permute(3, 0, 1, 2).unsqueeze(3),  # (L, B, G, 1, N)
    )
    h0 = u.new_zeros(batch, groups, e, n) if initial_state is None else initial_state
    return xs, h0.reshape(batch, groups, e, n).float()


def ssm_scan_exportable(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """SSM core as ``ssm_scan_chunked``: y_t = <h_t, C_t>, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t.

    All inputs fp32. u, dt: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L);
    initial_state: (B, D, N) or None. Returns y (B, D, L) and the last state (B, D, N).
    """
    from torch._higher_order_ops.scan import scan  # PyTorch's scan operator (export-only path)

    batch, dim, length = u.shape
    xs, h0 = _terms(u, dt, A, B, C, initial_state)

    def step(h: Tensor, x: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, b, c = x
        h = a * h + b  # (B, G, E, N)
        return h.clone(), (h * c).sum(-1)  # the carry, y_t (B, G, E)

    last, ys = scan(step, h0, xs, dim=0)  # (B, G, E, N), (L, B, G, E)
    return ys.permute(1, 2, 3, 0).reshape(batch, dim, length), last.reshape(batch, dim, -1)


def ssm_scan_unrolled(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None,
    steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``ssm_scan_exportable``'s steps in a Python loop over L (a fixed, small number): same
    arguments and results.

    steps: run that many steps whatever L (at most ``steps``; exported, L may stay symbolic):
    the frames past L get dt = 0, a decay of 1 and no input, so they leave the state as it is,
    and their outputs are cut off.

    Laid out time first and channels last, (L, B, G, N, E): each step takes its slice of one
    ``Split`` and the steps write one ``Concat`` (per frame a multiply-add on (B, G, N, E)),
    every broadcast runs along whole rows of E channels, and y is one batched product with C
    (in onnxruntime: few nodes, no broadcast over short rows of N)."""
    batch, dim, length = u.shape
    if steps is not None:
        torch._check(length <= steps)
        pad = (0, steps - length)  # (B, ..., steps): zeros after the L frames
        y, last = ssm_scan_unrolled(F.pad(u, pad), F.pad(dt, pad), A, F.pad(B, pad),
                                    F.pad(C, pad), initial_state)  # fmt: skip
        return y[..., :length], last
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (B, 1, N, L)
    groups, n = B.shape[1], A.shape[1]
    e = dim // groups
    dt_l = dt.permute(2, 0, 1).reshape(length, batch, groups, 1, e)  # (L, B, G, 1, E)
    u_l = u.permute(2, 0, 1).reshape(length, batch, groups, 1, e)  # (L, B, G, 1, E)
    a_t = A.reshape(groups, e, n).transpose(1, 2)  # (G, N, E)
    decay = torch.exp(dt_l * a_t)  # (L, B, G, N, E)
    inputs = (dt_l * u_l) * B.permute(3, 0, 1, 2).unsqueeze(-1)  # (L, B, G, N, E)
    if initial_state is None:
        h = u.new_zeros(1, batch, groups, n, e)
    else:  # (B, D, N) -> (1, B, G, N, E)
        h = initial_state.float().reshape(1, batch, groups, e, n).transpose(3, 4)
    hs = []
    for a, b in zip(decay.split(1), inputs.split(1), strict=True):  # (1, B, G, N, E) each
        h = a * h + b
        hs.append(h)
    last = h.transpose(3, 4).reshape(batch, dim, n)  # (B, D, N)
    if not hs:
        return u.new_zeros(batch, dim, 0), last
    c_l = C.permute(3, 0, 1, 2).unsqueeze(3)  # (L, B, G, 1, N)
    y = torch.matmul(c_l, torch.cat(hs))  # (L, B, G, 1, E)
    return y.permute(1, 2, 4, 3, 0).reshape(batch, dim, length), last
