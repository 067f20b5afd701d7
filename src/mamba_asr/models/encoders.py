"""Encoders of the research models: Conformer, ConMamba and Transformer stacks.

Shape key
    B: batch, L: frames (after the front end), M: d_model.

Every encoder takes the same options, ``(d_model, num_layers, nhead, d_ffn, kernel_size,
dropout, activation, mamba, ...)``, so a factory can pass one config to any of them (options an
encoder has no use for are accepted and ignored), and maps ``x (B, L, M), lengths (B,)`` to
``(B, L, M)`` with padded frames zero. Each ends in a LayerNorm (eps 1e-6), as SpeechBrain's
and Mamba-ASR's encoders do. ``ENCODERS`` maps the recipe names to the classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mamba_asr.modules.conformer import ConformerLayer, ConMambaLayer, TransformerEncoderLayer
from mamba_asr.modules.feedforward import FeedForward
from mamba_asr.modules.mamba import Mamba, MambaState
from mamba_asr.modules.masks import causal_mask, length_mask, shared_masks, zero_padding
from mamba_asr.modules.positional import RelativePositionalEncoding, SinusoidalPositionalEncoding

__all__ = [
    "ENCODERS",
    "ConMambaEncoder",
    "ConformerEncoder",
    "MambaEncoder",
    "MambaEncoderState",
    "TransformerEncoder",
]


class _Encoder(nn.Module):
    """Shared parts: the final LayerNorm and the padding masks around the layer stack, built once
    for all layers (``masks.shared_masks``)."""

    def __init__(self, d_model: int, num_layers: int, factory: dict[str, Any]) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d_model, self.num_layers = d_model, num_layers
        self.norm = nn.LayerNorm(d_model, eps=1e-6, **factory)

    layers: nn.ModuleList

    def _run_layers(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The layer stack, each layer as ``layer(x, lengths)`` unless a subclass says otherwise."""
        for layer in self.layers:
            x = layer(x, lengths)
        return x

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, L, M); lengths: (B,) valid frames or None. Returns (B, L, M), zero on padding."""
        with shared_masks():  # each layer's masks built once for the whole stack
            mask = None if lengths is None else length_mask(lengths, x.shape[1], x.device)
            x = zero_padding(x, mask)  # padding holds zeros, whatever came in (NaN included)
            return zero_padding(self.norm(self._run_layers(x, lengths)), mask)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_layers={self.num_layers}"


class ConformerEncoder(_Encoder):
    """Conformer stack (``ConformerLayer``, relative-position attention) + final LayerNorm.

    The relative position encoding (2L-1, M) is computed once per forward and shared by the
    layers. Mamba-ASR's Conformer uses Swish in the FFNs and the conv module (the default).
    ``mamba`` is unused. ``causal``: causal attention and causal depthwise convs.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        nhead: int = 4,
        d_ffn: int = 1024,
        kernel_size: int = 31,
        dropout: float = 0.0,
        activation: str = "swish",
        mamba: Mapping[str, Any] | None = None,
        conv_norm: str = "layernorm",
        causal: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(d_model, num_layers, factory)
        self.pos_enc = RelativePositionalEncoding(d_model)
        self.layers = nn.ModuleList(
            ConformerLayer(
                d_model,
                nhead,
                d_ffn,
                kernel_size,
                dropout,
                activation,
                conv_norm,
                causal,
                bias,
                **factory,
            )  # fmt: skip
            for _ in range(num_layers)
        )

    def _run_layers(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        pos_emb = self.pos_enc(x)  # (2L-1, M)
        for layer in self.layers:
            x = layer(x, lengths, pos_emb)
        return x


class ConMambaEncoder(_Encoder):
    """ConMamba stack (``ConMambaLayer``: bidirectional Mamba in place of attention) + final
    LayerNorm; no position encoding.

    ``mamba``: Mamba options (default d_state 16, expand 2, d_conv 4, bidirectional True).
    Mamba-ASR's ConMamba uses GELU in the FFNs and the conv module (the default). ``nhead`` is
    unused. ``causal``: causal Mamba and causal depthwise convs.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        nhead: int = 4,
        d_ffn: int = 1024,
        kernel_size: int = 31,
        dropout: float = 0.0,
        activation: str = "gelu",
        mamba: Mapping[str, Any] | None = None,
        conv_norm: str = "layernorm",
        causal: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(d_model, num_layers, factory)
        self.layers = nn.ModuleList(
            ConMambaLayer(
                d_model,
                d_ffn,
                kernel_size,
                dropout,
                activation,
                mamba,
                conv_norm,
                causal,
                bias,
                **factory,
            )  # fmt: skip
            for _ in range(num_layers)
        )


class TransformerEncoder(_Encoder):
    """Transformer stack (``TransformerEncoderLayer``, regular attention) + final LayerNorm.

    Absolute sinusoidal positions are added to the input (SpeechBrain's ``fixed_abs_sine``).
    ``kernel_size`` and ``mamba`` are unused. ``causal``: each frame attends to the past only.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        nhead: int = 4,
        d_ffn: int = 1024,
        kernel_size: int = 31,
        dropout: float = 0.0,
        activation: str = "gelu",
        mamba: Mapping[str, Any] | None = None,
        normalize_before: bool = True,
        causal: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(d_model, num_layers, factory)
        self.causal = causal
        self.pos_enc = SinusoidalPositionalEncoding(d_model)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                d_model, nhead, d_ffn, dropout, activation, normalize_before, **factory
            )
            for _ in range(num_layers)
        )

    def _run_layers(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        attn_mask = causal_mask(x.shape[1], x.device) if self.causal else None  # (L, L)
        x = x + self.pos_enc(x)  # (B, L, M)
        for layer in self.layers:
            x = layer(x, lengths, attn_mask)
        return x


# --- the causal Mamba encoder (streams) -----------------------------------------------------------------------------------


class MambaEncoderState(NamedTuple):
    """Streaming state of ``MambaEncoder``: one ``MambaState`` per layer."""

    layers: tuple[MambaState, ...]


class _MambaLayer(nn.Module):
    """Pre-norm residual causal Mamba block, then (optionally) a pre-norm residual FFN.

    x (B, L, M) -> x + dropout(Mamba(LN(x))) -> x + FFN(LN(x)).
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int | None,
        dropout: float,
        activation: str,
        mamba: dict,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm_mamba = nn.LayerNorm(d_model, **factory)
        self.mamba = Mamba(d_model, **mamba, **factory)
        self.dropout = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(d_model, **factory) if d_ffn else None
        self.ffn = FeedForward(d_model, d_ffn, dropout, activation, **factory) if d_ffn else None

    def _ffn(self, x: Tensor) -> Tensor:
        if self.ffn is None:
            return x
        return x + self.ffn(self.norm_ffn(x))

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """x: (B, L, M); lengths: (B,) or None -> (B, L, M)."""
        x = x + self.dropout(self.mamba(self.norm_mamba(x), lengths))
        return self._ffn(x)

    def forward_chunk(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """x: (B, t, M) new frames -> (B, t, M) and the Mamba state after them."""
        y, state = self.mamba.forward_chunk(self.norm_mamba(x), state)
        return self._ffn(x + self.dropout(y)), state


class MambaEncoder(_Encoder):
    """Causal Mamba stack: ``num_layers`` pre-norm residual (Mamba [+ FFN]) layers + LayerNorm.

    ``mamba``: Mamba options (d_state, expand, d_conv; ``bidirectional`` is ignored: this
    encoder is causal). ``d_ffn``: FFN width, or None/0 for Mamba-only layers. Maps
    x (B, L, M), lengths (B,) to (B, L, M) with padded frames zero, like the other encoders;
    ``init_state`` / ``forward_chunk`` stream it.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        d_ffn: int | None = None,
        dropout: float = 0.0,
        activation: str = "swish",
        mamba: dict | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(d_model, num_layers, factory)
        opts = {k: v for k, v in (mamba or {}).items() if k != "bidirectional"}
        self.layers = nn.ModuleList(
            _MambaLayer(d_model, d_ffn, dropout, activation, opts, **factory)
            for _ in range(num_layers)
        )

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaEncoderState:
        """Zero state for ``batch`` streams (device/dtype default to the parameters')."""
        return MambaEncoderState(
            layers=tuple(layer.mamba.init_state(batch, device, dtype) for layer in self.layers)
        )

    def forward_chunk(
        self, x: Tensor, state: MambaEncoderState
    ) -> tuple[Tensor, MambaEncoderState]:
        """x: (B, t, M), t >= 1 new frames -> (B, t, M) and the state after them."""
        states = []
        for layer, s in zip(self.layers, state.layers, strict=True):
            x, s = layer.forward_chunk(x, s)
            states.append(s)
        return self.norm(x), MambaEncoderState(layers=tuple(states))


ENCODERS: dict[str, type[nn.Module]] = {
    "conformer": ConformerEncoder,
    "conmamba": ConMambaEncoder,
    "transformer": TransformerEncoder,
    "mamba": MambaEncoder,
}
