"""Selective scan without loops: the path for exported graphs (ONNX) of short streaming chunks.

The recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t is written in closed form with the
cumulative sums S_t = sum_{r <= t} dt_r A:

    h_t = exp(S_t) h0 + sum_{s <= t} exp(S_t - S_s) dt_s u_s B_s

as one masked (L, L) weight per channel and state (Mamba-2's "segsum" form). Every op is a
plain tensor op whose shapes follow L symbolically (no Python loop over time), so one exported
graph takes chunks of any length. The cost is L times the sequential scan's and the weights
hold B * D * L * L * N values, fine for chunks of a few to a few dozen encoder frames (a
streaming step), not for whole utterances. exp(S_t - S_s) <= 1 where s <= t (A < 0, dt > 0)
and the rest is masked to -inf before the exp, so nothing overflows.

Shape key: B batch, G groups of B/C, E channels per group (D = G * E), L length, N state.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ssm_scan_quadratic"]


def ssm_scan_quadratic(
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
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (B, 1, N, L)
    groups, n = B.shape[1], A.shape[1]
    dt4 = dt.reshape(batch, groups, dim // groups, length)  # (B, G, E, L)
    u4 = u.reshape(batch, groups, dim // groups, length)
    A4 = A.reshape(groups, dim // groups, 1, n)  # (G, E, 1, N)
    Bt = B.transpose(-1, -2).unsqueeze(2)  # (B, G, 1, L, N)
    Ct = C.transpose(-1, -2).unsqueeze(2)  # (B, G, 1, L, N)
    S = torch.cumsum(dt4.unsqueeze(-1) * A4, dim=3)  # (B, G, E, L, N)
    X = (dt4 * u4).unsqueeze(-1) * Bt  # (B, G, E, L, N)
    diff = S.unsqueeze(4) - S.unsqueeze(3)  # (B, G, E, L_t, L_s, N): S_t - S_s
    steps = torch.arange(length, device=u.device)
    later = (steps[:, None] < steps[None, :])[:, :, None]  # (L_t, L_s, 1): s after t
    weights = diff.masked_fill(later, float("-inf")).exp()  # (B, G, E, L_t, L_s, N)
    h = (weights * X.unsqueeze(3)).sum(dim=4)  # (B, G, E, L, N)
    if initial_state is not None:
        h0 = initial_state.reshape(batch, groups, dim // groups, 1, n)
        h = h + S.exp() * h0
    y = (h * Ct).sum(dim=-1).reshape(batch, dim, length)  # (B, D, L)
    last = h[:, :, :, -1].reshape(batch, dim, n)  # (B, D, N)
    return y, last
