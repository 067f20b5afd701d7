"""The scan core of exported graphs (PyTorch's scan operator) against the sequential reference."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.ops.selective_scan import resolve_backend, selective_scan_fn, selective_scan_ref


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("length", [1, 3, 17])
def test_exportable_equals_the_reference(groups, length):
    g = torch.Generator().manual_seed(length)
    batch, dim, n = 2, 8, 4
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    args = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g),
        A=-torch.exp(torch.randn(dim, n, generator=g)),
        B=torch.randn(*bc, generator=g),
        C=torch.randn(*bc, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=torch.randn(dim, generator=g) * 0.3,
        delta_softplus=True,
        return_last_state=True,
        initial_state=torch.randn(batch, dim, n, generator=g),
    )
    y, last = selective_scan_fn(**args, backend="exportable")
    y_ref, last_ref = selective_scan_ref(**args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)


def test_auto_is_exportable_only_while_exporting():
    assert resolve_backend(torch.device("cpu")) != "exportable"
