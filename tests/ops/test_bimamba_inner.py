"""ops.bimamba_inner: where it runs, and on CUDA against BiMamba's separate operators (outputs
and every gradient, fp32 and bf16 autocast). Its arithmetic against the separate operators in
triton's interpreter, and a padded batch against each utterance alone, are in
tests/modules/test_mamba.py (the interpreted subprocess there)."""

from __future__ import annotations

import pytest
import torch

import mamba_asr.modules.mamba as mamba_module
from helpers.checks import assert_rel_close
from mamba_asr.modules.mamba import BiMamba
from mamba_asr.ops import bimamba_inner
from mamba_asr.ops.selective_scan.triton_kernel import CONFIG


def test_inner_does_not_run_on_the_cpu() -> None:
    """On the CPU the scan resolves to its native or chunked backend: the separate operators."""
    assert not bimamba_inner.inner_runs_on(torch.device("cpu"))


@pytest.mark.parametrize(
    ("scan", "kernel", "conv", "runs"),
    [
        ("triton", "time", "triton", True),
        ("native", "time", "triton", False),
        ("triton", "state", "triton", False),
        ("triton", "time", "torch", False),
    ],
)
def test_inner_runs_where_both_kernels_do(
    monkeypatch: pytest.MonkeyPatch, scan: str, kernel: str, conv: str, runs: bool
) -> None:
    """Only where the scan resolves to Triton's time-parallel kernel and the 4-tap conv to its
    Triton kernels."""
    monkeypatch.setattr(bimamba_inner.dispatch, "resolve_backend", lambda device: scan)
    monkeypatch.setattr(
        bimamba_inner.depthwise_conv, "resolve_backend", lambda backend, taps, device: conv
    )
    monkeypatch.setitem(CONFIG, "kernel", kernel)
    assert bimamba_inner.inner_runs_on(torch.device("cuda")) is runs


def _run(model: BiMamba, x: torch.Tensor, lengths: torch.Tensor, inner: bool, dtype):
    model.zero_grad(set_to_none=True)
    x_run = x.clone().requires_grad_()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mamba_module, "inner_runs_on", lambda device: inner)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = model(x_run, lengths)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {f"param {name}": p.grad.clone() for name, p in model.named_parameters()}
    return {"output": y.detach().float(), "input grad": x_run.grad, **grads}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inner_matches_the_separate_operators_cuda(dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    assert bimamba_inner.inner_runs_on(device)
    torch.manual_seed(0)
    model = BiMamba(64, d_state=16, bias=True, device=device)
    lengths = torch.tensor([300, 211, 37, 300], device=device)
    x = torch.randn(4, 300, 64, device=device)
    inner = _run(model, x, lengths, True, dtype)
    separate = _run(model, x, lengths, False, dtype)
    # the same arithmetic; fp32 atomic sums (dA, dB, dC) land in another order from run to run,
    # and in bf16 that can move a rounding
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for what, expected in separate.items():
        assert expected.abs().max() > 0, what
        assert_rel_close(inner[what], expected, tol, f"{dtype}: {what}")
