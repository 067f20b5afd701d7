"""Depthwise 1-D convolution over time with zero padding, bias and an optional SiLU: the causal
conv of a Mamba block (``left = K - 1``) and the "same" conv of a Conformer's convolution module
(``left = (K - 1) // 2``), in one op.

Shape key: B batch, C channels, L frames, K kernel taps.

Two implementations: the composite of PyTorch ops, ``depthwise_conv1d_ref`` (pad, conv1d,
SiLU), which the other is tested against, and fused Triton kernels for CUDA (or triton's
interpreter) (``depthwise_conv_triton.py``: the padding, bias and activation inside, x read in
place in any memory layout, the backward in two kernels). The kernels are chosen with backend
"triton", or "auto" where they run. The default is ``MAMBA_ASR_DEPTHWISE_CONV`` when it is set,
else "measured": the kernels on CUDA for convs of at most ``TRITON_MAX_TAPS`` taps (the Mamba
blocks' causal conv with its SiLU: forward+backward 1.6x PyTorch's on an H200, fp32 and bf16) and
PyTorch's for longer ones (the convolution module's 31 taps, where the kernels' bf16 backward
was slower: 0.81x), as ``benchmarks/depthwise_conv.py`` measured (docs/benchmarks.md).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_asr.ops.selective_scan.dispatch import triton_runs_on

__all__ = ["ACTIVATIONS", "depthwise_conv1d", "depthwise_conv1d_ref", "resolve_backend"]

ACTIVATIONS = (None, "silu")
BACKENDS = ("auto", "measured", "torch", "triton")
BACKEND_ENV = "MAMBA_ASR_DEPTHWISE_CONV"
TRITON_MAX_TAPS = 4  # "measured": the kernels for convs of at most this many taps


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, left: int, activation: str | None):
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, length), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != channels:
        raise ValueError(f"weight must be (channels={channels}, taps), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must be (channels={channels},), got {tuple(bias.shape)}")
    if not 0 <= left < weight.shape[1]:
        raise ValueError(f"left must be in [0, {weight.shape[1] - 1}], got {left}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def depthwise_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    left: int = 0,
    activation: str | None = None,
) -> Tensor:
    """y[b, c, t] = act(bias[c] + sum_k weight[c, k] x[b, c, t - left + k]), x zero outside
    [0, L): x (B, C, L), weight (C, K), bias (C,) -> y (B, C, L) in x's dtype."""
    _check(x, weight, bias, left, activation)
    taps = weight.shape[1]
    xp = F.pad(x, (left, taps - 1 - left))
    y = F.conv1d(xp, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=x.shape[1])  # fmt: skip
    return F.silu(y) if activation == "silu" else y


def resolve_backend(backend: str | None, taps: int, device: torch.device) -> str:
    """ "torch" or "triton": what ``depthwise_conv1d`` runs for ``backend`` (as there) on a conv of
    ``taps`` taps whose input lies on ``device``. Exports take "torch"."""
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "measured")
    if backend not in BACKENDS:
        raise ValueError(f"depthwise conv backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "measured":
        backend = "auto" if taps <= TRITON_MAX_TAPS else "torch"
    triton_ok = triton_runs_on(device)
    if backend == "triton" and not triton_ok:
        raise ValueError(f"the triton depthwise conv needs triton and CUDA, not {device.type}")
    if backend == "torch" or not triton_ok or torch.compiler.is_exporting():
        return "torch"
    return "triton"


def depthwise_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    left: int = 0,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """``depthwise_conv1d_ref``'s result; backend "auto" (Triton where it runs, else "torch", the
    composite), "measured" ("auto" for at most ``TRITON_MAX_TAPS`` taps, else "torch"), "torch"
    or "triton"; None: ``MAMBA_ASR_DEPTHWISE_CONV``, else "measured". Differentiable in x, weight
    and bias."""
    if resolve_backend(backend, weight.shape[-1], x.device) == "torch":
        return depthwise_conv1d_ref(x, weight, bias, left, activation)
    _check(x, weight, bias, left, activation)
    from mamba_asr.ops.depthwise_conv_triton import TritonDepthwiseConv

    return TritonDepthwiseConv.apply(x, weight, bias, left, activation == "silu")
