"""Pick a selective-scan implementation for the inputs' device."""

from __future__ import annotations

from torch import Tensor

from mamba_asr.ops.selective_scan.reference import selective_scan_ref

BACKENDS = ("auto", "ref")


def selective_scan_fn(
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
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan; same arguments and shapes as ``selective_scan_ref``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
    )
