"""The streaming step of a Mamba transducer's encoder as the chunk graph computes it.

Shape key
    B: streams, t: feature frames of a chunk (1..T), T: a full chunk's feature frames,
    C: channels of a front-end stage, K: kernel size, M: d_model, D: d_inner, N: d_state,
    R: dt_rank, L: frames of a stage or of the encoder in a full chunk, J: joiner_dim.

``ChunkStep(model, frames)`` computes ``model.forward_chunk`` (front end and encoder) and the
joiner's encoder projection for chunks of at most ``frames`` feature frames, from the model's
own parameters, in the form that makes a small ONNX graph for onnxruntime
(``encoder_chunk.onnx``, ``mamba_asr.export.onnx``); it is used only to export that graph.
What differs from ``forward_chunk``, and why (each kernel call of onnxruntime costs a few
microseconds, and a 320 ms chunk is 4 encoder frames, so the number of nodes sets the time):

- every chunk is padded to ``frames`` feature frames at the start, so every shape in the graph
  is fixed but the batch; the outputs keep the first ceil(t / S) frames, the new states are
  taken after the last valid inputs (one ``Gather`` each), and the padded frames' step sizes
  dt are zero in the selective scan, so they leave its state as it is (a decay of exactly 1,
  no input);
- everything is laid out time before channels, (B, L, D), as ``Linear`` and ``LayerNorm``
  take it: no ``Transpose`` around the convolutions and the scan, and the state tensors too
  (``time_first``): the caches (B, K-1, C), each Mamba block's conv (B, K-1, D) and ssm
  (B, N, D) states (the model's tensors transposed; ``EncoderChunk(time_first=True)`` gives
  the general graph the same inputs and outputs);
- the depthwise causal convolutions (the front end's, stride 2, and each Mamba block's) are
  one ``Gather`` of the K shifted windows, a product with the (K, C) weights and a sum over
  K; the front end's pointwise convolutions are matrix products;
- the selective scan is unrolled over the L frames on (B, 1, N, D) states (the channels, the
  longest axis, innermost); its per-frame values are (B, L, 1, D), the shape the depthwise
  convolution's sum leaves, so no ``Unsqueeze`` is needed;
- dt = softplus(delta) is log(1 + exp(delta)) (x itself above 20, as PyTorch's threshold)
  in five vectorized kernels (``Min``, ``Exp``, ``Add``, ``Log``, ``Max``), a third of the
  time of onnxruntime's one ``Softplus``. log(1 + e) rounds 1 + e: an absolute error of up
  to 6e-8 in dt, which is below the rounding of the scan's state (measured: the fp32
  export's transcripts of a 92-utterance dev set equal PyTorch's).

Derived constants (the convolution weights as (K, C) and (C_out, C_in), A = -exp(A_log) as
(N, D)) are buffers made from the model's parameters when a ``ChunkStep`` is made. The model's
``forward_chunk`` and its training are untouched; ``tests/export/test_chunk_step.py`` checks
that ``ChunkStep`` gives ``forward_chunk``'s memory and states on random chunks and states.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.models.encoders import MambaEncoder
from mamba_asr.modules.causal_frontend import CausalConvFrontEnd

__all__ = ["ChunkStep", "supports_chunk_step", "time_first"]


def time_first(state: Tensor) -> Tensor:
    """An encoder state tensor of the model, (B, C, K-1) or (B, D, N), in the layout of
    ``ChunkStep``, (B, K-1, C) or (B, N, D); and back (the same transposition)."""
    return state.transpose(1, 2)


def supports_chunk_step(model: nn.Module) -> bool:
    """True for a model ``ChunkStep`` computes: the causal convolutional front end and the
    causal Mamba encoder, with a joiner."""
    return (
        isinstance(getattr(model, "frontend", None), CausalConvFrontEnd)
        and isinstance(getattr(model, "encoder", None), MambaEncoder)
        and hasattr(model, "joiner")
    )


def _windows(length: int, kernel: int, stride: int) -> Tensor:
    """(L' * K,) indices of each output's K inputs, output by output, in a causal input of
    K-1 + length frames (L' = ceil(length / stride))."""
    out = (length - 1) // stride + 1
    return (torch.arange(out)[:, None] * stride + torch.arange(kernel)).flatten()


def _depthwise(xc: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """A depthwise 1-d convolution, time first: xc (B, K-1+L, C), weight (K, C), bias (C,)
    -> (B, L', 1, C), L' = ceil(L / stride)."""
    kernel, channels = weight.shape
    index = _windows(xc.shape[1] - kernel + 1, kernel, stride)  # (L' * K,)
    win = xc.index_select(1, index).reshape(-1, index.numel() // kernel, kernel, channels)
    y = (win * weight).sum(2, keepdim=True)  # (B, L', K, C) -> (B, L', 1, C)
    return y if bias is None else y + bias


def _after(xc: Tensor, valid: Any, size: int) -> Tensor:
    """The ``size`` frames of xc (B, size + L, C) that follow its first ``valid`` frames (the
    last ``size`` inputs before the padding): (B, size, C)."""
    return xc.index_select(1, torch.arange(size) + valid)


def _softplus(x: Tensor) -> Tensor:
    """softplus(x) = log(1 + exp(x)), x itself above 20 (as PyTorch's threshold), in five
    vectorized onnxruntime kernels (see the module docstring)."""
    return torch.maximum(x, torch.log(torch.exp(x.clamp(max=20.0)) + 1.0))


class ChunkStep(nn.Module):
    """(feats (B, t, C), *state) -> (memory (B, t', M), encoder projection (B, t', J),
    *new state), 1 <= t <= ``frames``; the state tensors flat, in ``init_state``'s order
    (``mamba_asr.export.onnx.state_leaves``), each ``time_first``."""

    def __init__(self, model: nn.Module, frames: int) -> None:
        super().__init__()
        if not supports_chunk_step(model):
            raise TypeError(
                f"ChunkStep needs a causal convolutional front end and a Mamba encoder, not "
                f"{type(getattr(model, 'frontend', None)).__name__} and "
                f"{type(getattr(model, 'encoder', None)).__name__}"
            )
        self.model, self.frames = model, frames
        self.steps = -(-frames // model.subsampling)  # encoder frames of a full chunk
        with torch.no_grad():
            for i, stage in enumerate(model.frontend.stages):
                self.register_buffer(f"depthwise{i}", stage.depthwise.weight[:, 0].t().clone())
                self.register_buffer(f"pointwise{i}", stage.pointwise.weight[:, :, 0].clone())
            for i, layer in enumerate(model.encoder.layers):
                branch = layer.mamba.fwd
                self.register_buffer(f"conv{i}", branch.conv1d.weight[:, 0].t().clone())
                self.register_buffer(f"A{i}", -torch.exp(branch.A_log.float()).t().clone())

    def pointwise_weights(self) -> list[Tensor]:
        """The front end's pointwise weights (C_out, C_in), as the graph's matrix products
        hold them transposed."""
        return [getattr(self, f"pointwise{i}") for i in range(len(self.model.frontend.stages))]

    def forward(self, feats: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        stages = model.frontend.stages
        caches, layers = state[: len(stages)], state[len(stages) :]
        valid = feats.shape[1]
        torch._check(valid <= self.frames)
        x = F.pad(feats, (0, 0, 0, self.frames - valid))  # (B, T, C), zeros after t
        new_caches = []
        for i, (stage, cache) in enumerate(zip(stages, caches, strict=True)):
            x, cache = self._stage(i, stage, x, cache, valid)  # (B, L / 2, C_out)
            new_caches.append(cache)
            valid = (valid + 1) // 2
        x = model.frontend.proj(x)  # (B, L, M)
        keep = (torch.arange(self.steps) < valid).float()[:, None, None]  # (L, 1, 1)
        new_layers = []
        for i, layer in enumerate(model.encoder.layers):
            conv, ssm = layers[2 * i : 2 * i + 2]
            y, conv, ssm = self._mamba(i, layer.mamba, layer.norm_mamba(x), conv, ssm, valid, keep)
            x = layer._ffn(x + y)
            new_layers += [conv, ssm]
        memory = model.encoder.norm(x)[:, :valid]  # (B, t', M)
        proj = model.joiner.project_encoder(memory)  # (B, t', J)
        return (memory, proj, *new_caches, *new_layers)

    def _stage(
        self, i: int, stage: nn.Module, x: Tensor, cache: Tensor, valid: Any
    ) -> tuple[Tensor, Tensor]:
        """Front-end stage i on x (B, L, C_in), its first ``valid`` frames real, and its cache
        (B, K-1, C_in) -> (B, L / 2, C_out) and the new cache."""
        xc = torch.cat([cache.to(x.dtype), x], dim=1)  # (B, K-1+L, C_in)
        new = _after(xc, valid, stage.kernel_size - 1)
        y = _depthwise(xc, getattr(self, f"depthwise{i}"), stage.depthwise.bias, 2).squeeze(2)
        y = F.linear(y, getattr(self, f"pointwise{i}"), stage.pointwise.bias)  # (B, L/2, C_out)
        return stage.dropout(stage.activation(stage.norm(y))), new

    def _mamba(
        self, i: int, mamba: nn.Module, x: Tensor, conv: Tensor, ssm: Tensor, valid: Any,
        keep: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """``Mamba.forward_chunk`` of layer i on x (B, L, M), its first ``valid`` frames real;
        keep (L, 1, 1): 1 on those frames, 0 after; conv (B, K-1, D), ssm (B, N, D). Returns
        y (B, L, M) and the new conv and ssm states."""
        branch = mamba.fwd
        x_in, z = mamba.in_proj(x).split(mamba.d_inner, dim=-1)  # (B, L, D) each
        xc = torch.cat([conv.to(x.dtype), x_in], dim=1)  # (B, K-1+L, D)
        new_conv = _after(xc, valid, branch.d_conv - 1)  # (B, K-1, D)
        u = F.silu(_depthwise(xc, getattr(self, f"conv{i}"), branch.conv1d.bias, 1))
        dt, B, C = branch.x_proj(u).split([branch.dt_rank, mamba.d_state, mamba.d_state], -1)
        u32 = u.float()  # (B, L, 1, D)
        delta = F.linear(dt, branch.dt_proj.weight).float() + branch.dt_proj.bias.float()
        dt = _softplus(delta) * keep  # (B, L, 1, D), 0 on the padding
        decay = torch.exp(dt * getattr(self, f"A{i}"))  # (B, L, N, D)
        B = B.float().reshape(-1, self.steps, mamba.d_state, 1)  # (B, L, N, 1), no copy
        inputs = (dt * u32) * B  # (B, L, N, D)
        h = ssm.float()[:, None]  # (B, 1, N, D)
        hs = []
        for a, b in zip(decay.split(1, dim=1), inputs.split(1, dim=1), strict=True):
            h = a * h + b  # (B, 1, N, D)
            hs.append(h)
        y = torch.matmul(C.float(), torch.cat(hs, dim=1))  # (B, L, 1, D)
        y = (y + u32 * branch.D.float()).squeeze(2) * F.silu(z.float())  # (B, L, D)
        # the state after the last valid frame: the padded ones leave it as it is
        return mamba.out_proj(y.to(x.dtype)), new_conv, h.squeeze(1)
