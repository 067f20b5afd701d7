"""depthwise_conv1d: the reference against a plain loop, the argument checks, and the Triton
kernels against the reference (outputs and gradients) in triton's CPU interpreter (a subprocess,
since triton reads TRITON_INTERPRET at import) and on CUDA where there is one."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.interpreter import interpreted_json, needs_interpreter, needs_triton
from mamba_asr.ops import depthwise_conv as dc
from mamba_asr.ops.depthwise_conv import depthwise_conv1d, depthwise_conv1d_ref, resolve_backend

# (batch, channels, length, taps, left, activation, bias, channels-last x, dtype)
CASES = [
    (2, 5, 37, 4, 3, None, True, False, "float32"),
    (2, 5, 37, 4, 3, "silu", True, False, "float32"),
    (3, 70, 40, 7, 3, None, True, True, "float32"),
    (2, 9, 150, 4, 3, "silu", False, False, "bfloat16"),
]
TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def _loop(x, w, b, left, activation):
    batch, channels, length = x.shape
    y = torch.zeros(batch, channels, length)
    for t in range(length):
        for k in range(w.shape[1]):
            s = t - left + k
            if 0 <= s < length:
                y[:, :, t] += w[:, k] * x[:, :, s]
    if b is not None:
        y += b[None, :, None]
    return torch.nn.functional.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("left, activation", [(3, "silu"), (1, None), (0, None)])
def test_reference_is_the_padded_convolution(left, activation):
    g = torch.Generator().manual_seed(left)
    x, w, b = torch.randn(2, 3, 11, generator=g), torch.randn(3, 4, generator=g), torch.randn(3)
    y = depthwise_conv1d_ref(x, w, b, left, activation)
    torch.testing.assert_close(y, _loop(x, w, b, left, activation), atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_named():
    x, w = torch.randn(2, 3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv1d(x, torch.randn(4, 4))
    with pytest.raises(ValueError, match="left"):
        depthwise_conv1d(x, w, left=4)
    with pytest.raises(ValueError, match="activation"):
        depthwise_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="backend"):
        depthwise_conv1d(x, w, backend="cudnn")


def test_backend_choice(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.delenv(dc.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dc, "triton_runs_on", lambda device: device.type == "cuda")
    # the default ("measured"): the kernels for the Mamba blocks' few taps, PyTorch's for 31
    assert resolve_backend(None, 4, cuda) == "triton"
    assert resolve_backend(None, dc.TRITON_MAX_TAPS + 1, cuda) == "torch"
    assert resolve_backend(None, 31, cuda) == "torch"
    assert resolve_backend(None, 4, torch.device("cpu")) == "torch"
    assert resolve_backend("auto", 31, cuda) == "triton"
    assert resolve_backend("torch", 4, cuda) == "torch"
    monkeypatch.setenv(dc.BACKEND_ENV, "torch")
    assert resolve_backend(None, 4, cuda) == "torch"
    monkeypatch.setenv(dc.BACKEND_ENV, "auto")
    assert resolve_backend(None, 31, cuda) == "triton"
    monkeypatch.setenv(dc.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(None, 4, cuda)
    with pytest.raises(ValueError, match="needs triton and CUDA"):
        resolve_backend("triton", 4, torch.device("cpu"))


def errors(case, device: str) -> dict[str, float]:
    """Relative max errors of y and of the gradients of x, weight and bias, triton vs reference."""
    batch, channels, length, taps, left, activation, bias, last, dtype_name = case
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(channels + length)
    if last:  # channels-last memory, as a Conformer's convolution module holds it
        x = torch.randn(batch, length, channels, generator=g).to(device, dtype).transpose(1, 2)
    else:
        x = torch.randn(batch, channels, length, generator=g).to(device, dtype)
    w = (torch.randn(channels, taps, generator=g) * 0.5).to(device)
    b = torch.randn(channels, generator=g).to(device) if bias else None
    gy = torch.randn(batch, channels, length, generator=g).to(device)
    tensors = [t.requires_grad_() for t in (x, w, b) if t is not None]
    results = []
    for backend in ("torch", "triton"):
        y = depthwise_conv1d(x, w, b, left, activation, backend=backend)
        results.append([y, *torch.autograd.grad((y.float() * gy).sum(), tensors)])
    names = ["y", "dx", "dw", "db"][: len(results[0])]
    return {
        n: ((q.float() - p.float()).abs().max() / p.float().abs().max().clamp_min(1e-6)).item()
        for n, p, q in zip(names, *results, strict=True)
    }


@needs_interpreter
@needs_triton
def test_triton_interpreted_matches_reference():
    for case, errs in zip(CASES, interpreted_json(__file__), strict=True):
        assert all(e <= TOL[case[-1]] for e in errs.values()), (case, errs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("case", CASES + [(16, 512, 1500, 31, 15, None, True, True, "bfloat16")])
def test_triton_cuda_matches_reference(case):
    errs = errors(case, "cuda")
    assert all(e <= TOL[case[-1]] for e in errs.values()), errs


if __name__ == "__main__":  # the interpreted run of the test above
    print(json.dumps([errors(case, "cpu") for case in CASES]))
