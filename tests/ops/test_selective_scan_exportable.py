"""The scan cores of exported graphs (PyTorch's scan operator; the unrolled loop) against the
sequential reference, and the choice between them while exporting."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.ops.selective_scan import (
    export_backend,
    resolve_backend,
    selective_scan_fn,
    selective_scan_ref,
)


@pytest.mark.parametrize("backend", ["exportable", "unrolled"])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("length", [1, 3, 17])
def test_exportable_equals_the_reference(backend, groups, length):
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
    y, last = selective_scan_fn(**args, backend=backend)
    y_ref, last_ref = selective_scan_ref(**args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 3, 4])
def test_unrolled_with_more_steps_than_frames_equals_the_plain_loop(length):
    """steps=4 runs four steps whatever the length: the frames past it change nothing."""
    from mamba_asr.ops.selective_scan.exportable import ssm_scan_unrolled

    g = torch.Generator().manual_seed(length)
    batch, dim, n = 2, 8, 4
    u, dt = (
        torch.randn(batch, dim, length, generator=g),
        torch.rand(batch, dim, length, generator=g),
    )
    A = -torch.exp(torch.randn(dim, n, generator=g))
    B, C = torch.randn(batch, n, length, generator=g), torch.randn(batch, n, length, generator=g)
    h0 = torch.randn(batch, dim, n, generator=g)
    y, last = ssm_scan_unrolled(u, dt, A, B, C, h0, steps=4)
    y_ref, last_ref = ssm_scan_unrolled(u, dt, A, B, C, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last, last_ref, rtol=1e-6, atol=1e-6)
    if length > 1:
        with pytest.raises(RuntimeError):  # fewer steps than frames
            ssm_scan_unrolled(u, dt, A, B, C, h0, steps=length - 1)


def test_auto_is_exportable_only_while_exporting():
    assert resolve_backend(torch.device("cpu")) != "exportable"


class Scan(torch.nn.Module):
    def forward(self, u, delta, A, B, C, h0):
        return selective_scan_fn(u, delta, A, B, C, return_last_state=True, initial_state=h0)


def exported_targets(*args) -> set[str]:
    program = torch.export.export(Scan(), args, strict=False)
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_export_backend_picks_what_auto_exports_as():
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(1, 4, 3, generator=g), torch.randn(1, 4, 3, generator=g),
        -torch.rand(4, 2, generator=g), torch.randn(1, 2, 3, generator=g),
        torch.randn(1, 2, 3, generator=g), torch.randn(1, 4, 2, generator=g),
    )  # fmt: skip
    assert any("scan" in t for t in exported_targets(*args))
    with export_backend("unrolled"):
        assert resolve_backend(torch.device("cpu")) != "unrolled"  # only while exporting
        targets = exported_targets(*args)
    assert not any("scan" in t for t in targets)
    assert any("scan" in t for t in exported_targets(*args))  # back to the default
    with pytest.raises(ValueError, match="export backend must be one of"):
        export_backend("native").__enter__()
