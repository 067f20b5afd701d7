"""The MLX selective scan (chunked offline, one step streaming) against the PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.mlx_models import requires_mlx
from mamba_asr.ops.selective_scan.reference import selective_scan_ref

pytestmark = requires_mlx


def _inputs(batch: int, dim: int, length: int, d_state: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(batch, dim, length, generator=g) for _ in range(3))
    A = -torch.rand(dim, d_state, generator=g) * 4 - 0.1
    B, C = (torch.randn(batch, d_state, length, generator=g) for _ in range(2))
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g) - 2
    h0 = torch.randn(batch, dim, d_state, generator=g)
    return u, delta, A, B, C, D, z, bias, h0


def _mx(t: torch.Tensor, channels_last: bool = True):
    import mlx.core as mx

    return mx.array((t.transpose(1, 2) if channels_last else t).numpy())


def _mx_inputs(*args: int, seed: int):
    """``_inputs`` in the MLX layout: u, delta, B, C, z channels-last (B, L, .)."""
    u, delta, A, B, C, D, z, bias, h0 = _inputs(*args, seed=seed)
    return (_mx(u), _mx(delta), _mx(A, False), _mx(B), _mx(C), _mx(D, False), _mx(z),
            _mx(bias, False), _mx(h0, False))  # fmt: skip


@pytest.mark.parametrize("length", [1, 7, 64, 130])
@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_scan_matches_reference(length: int, chunk: int, with_h0: bool, compiled: bool) -> None:
    from mamba_asr.backends.mlx.scan import selective_scan

    u, delta, A, B, C, D, z, bias, h0 = _inputs(2, 6, length, 4, seed=length + chunk)
    ref, ref_h = selective_scan_ref(
        u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True,
        initial_state=h0 if with_h0 else None,
    )  # fmt: skip
    y, h = selective_scan(
        _mx(u), _mx(delta), _mx(A, False), _mx(B), _mx(C), _mx(D, False), _mx(z),
        _mx(bias, False), _mx(h0, False) if with_h0 else None, chunk=chunk, compiled=compiled,
    )  # fmt: skip
    np.testing.assert_allclose(np.array(y), ref.transpose(1, 2).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(h), ref_h.numpy(), rtol=1e-4, atol=1e-5)


def test_steps_equal_the_scan() -> None:
    import mlx.core as mx

    from mamba_asr.backends.mlx.scan import selective_scan, selective_step

    u, delta, A, B, C, D, z, bias, h0 = _mx_inputs(3, 5, 9, 4, seed=1)
    y_all, h_all = selective_scan(u, delta, A, B, C, D, z, bias, h0)
    h, ys = h0, []
    for t in range(9):
        y, h = selective_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], D, z[:, t], bias, h)
        ys.append(y)
    np.testing.assert_allclose(np.array(mx.stack(ys, 1)), np.array(y_all), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(h), np.array(h_all), rtol=1e-5, atol=1e-6)


def test_bad_chunk_is_refused() -> None:
    from mamba_asr.backends.mlx.scan import selective_scan

    u, delta, A, B, C, D, z, bias, _ = _mx_inputs(1, 2, 3, 2, seed=0)
    with pytest.raises(ValueError, match="chunk"):
        selective_scan(u, delta, A, B, C, D, z, bias, chunk=0)
