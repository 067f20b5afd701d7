"""Numerical comparison used by the op tests."""

from __future__ import annotations

import torch


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Same shape, finite, and max |actual - expected| / max |expected| <= tol (in fp32)."""
    actual, expected = actual.float(), expected.float()
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().clamp_min(1e-6)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"
