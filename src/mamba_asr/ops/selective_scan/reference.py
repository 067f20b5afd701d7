"""Plain sequential selective scan: the reference every fast path is tested against.

Shape key
    B: batch, D: channels (d_inner), L: sequence length, N: state size (d_state),
    G: groups of B/C (D must be a multiple of G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
) -> None:
    """Raise ValueError naming the argument whose shape does not fit."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (batch, d_state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (d_state, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch, d_state, length) or (batch, groups, d_state, length) "
                f"with groups dividing dim={dim}, got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, d_state):
        raise ValueError(
            f"initial_state must be (batch, dim, d_state)={(batch, dim, d_state)}, "
            f"got {tuple(initial_state.shape)}"
        )


def expand_groups(X: Tensor, dim: int) -> Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, D, N, L) view, each group repeated over its channels."""
    if X.dim() == 3:
        return X.unsqueeze(1).expand(-1, dim, -1, -1)
    batch, groups, n, length = X.shape
    return (
        X.unsqueeze(2)
        .expand(batch, groups, dim // groups, n, length)
        .reshape(batch, dim, n, length)
    )


def selective_scan_ref(
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
    """Sequential selective scan in fp32.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,);
    initial_state: (B, D, N).

        dt_t = softplus(delta_t + delta_bias)            (softplus if delta_softplus)
        h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (h_{-1} = initial_state or 0)
        y_t  = <h_t, C_t> + D * u_t;  out_t = y_t * silu(z_t)  (silu in z's dtype: silu_gate)

    Returns out (B, D, L) in u's dtype, and with return_last_state also h_{L-1} (B, D, N) fp32.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    batch, dim, length = u.shape
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B.float(), dim)  # (B, D, N, L)
    Cx = expand_groups(C.float(), dim)  # (B, D, N, L)
    dA = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])  # (B, D, N, L)
    dBu = (delta * u).unsqueeze(2) * Bx  # (B, D, N, L)
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.float()
    ys = []
    # unbind: one view per step whose backward is a single stack (indexing would cost O(L^2))
    for dA_t, dBu_t, C_t in zip(dA.unbind(-1), dBu.unbind(-1), Cx.unbind(-1), strict=True):
        h = dA_t * h + dBu_t
        ys.append((h * C_t).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1) if length > 0 else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * silu_gate(z)
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def silu_gate(z: Tensor) -> Tensor:
    """The output gate silu(z) in fp32, computed in z's dtype: PyTorch's ``F.silu`` on a half
    tensor rounds it so, state-spaces/mamba's reference gates with it (``y * F.silu(z)``), and the
    Triton kernels round it alike (``CONFIG["round_gate"]``). In bf16 the rounding moves dA by
    about 0.4% at L 2048, more than that project's test allows."""
    return F.silu(z).float()
