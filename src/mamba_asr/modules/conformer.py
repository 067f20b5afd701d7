"""Encoder layers: Conformer, ConMamba and Transformer, with the Conformer convolution module.

Shape key
    B: batch, L: frames, M: d_model, F: d_ffn, K: depthwise kernel size.

Layouts follow SpeechBrain's ``ConformerEncoderLayer`` / ``TransformerEncoderLayer`` and
xi-j/Mamba-ASR's ``ConmambaEncoderLayer`` (which layers carry biases and norms), so parameter
counts match the published models. Every layer takes ``lengths`` (B,) of valid frames: padded
frames never change valid outputs (attention masks padded keys, the convolution module zeroes
padded frames before its depthwise conv, Mamba masks its scan) and come out as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.modules.attention import MultiHeadAttention, RelPosMHAXL
from mamba_asr.modules.feedforward import FeedForward, make_activation
from mamba_asr.modules.mamba import BiMamba, Mamba
from mamba_asr.modules.masks import causal_mask, length_mask, padded_frames, zero_padding
from mamba_asr.ops.depthwise_conv import depthwise_conv1d

__all__ = [
    "CONV_NORMS",
    "DEFAULT_MAMBA",
    "ConMambaLayer",
    "ConformerLayer",
    "ConvolutionModule",
    "TransformerEncoderLayer",
]

CONV_NORMS = ("layernorm", "batchnorm")
DEFAULT_MAMBA: Mapping[str, Any] = MappingProxyType(
    {"d_state": 16, "expand": 2, "d_conv": 4, "bidirectional": True}
)


def _frame_mask(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """(B, L, ...) and (B,) lengths -> (B, L) bool, True on valid frames; None without lengths."""
    return None if lengths is None else length_mask(lengths, x.shape[1], x.device)


def _half_step_ffn(
    d_model: int, d_ffn: int, dropout: float, activation: str, factory: dict[str, Any]
) -> nn.Sequential:
    """LayerNorm -> FeedForward, the macaron half-step (the caller scales it by 1/2)."""
    return nn.Sequential(
        nn.LayerNorm(d_model, **factory),
        FeedForward(d_model, d_ffn, dropout, activation, **factory),
    )


class ConvolutionModule(nn.Module):
    """Conformer convolution module.

    x (B, L, M) -> LayerNorm -> pointwise (M -> 2M) -> GLU -> depthwise conv (K, zero-padded
    "same", or left-only when ``causal``) -> norm -> activation -> pointwise (M -> M) -> dropout.
    The pointwise convs are ``nn.Linear`` (SpeechBrain's first one is a kernel-1 Conv1d: same
    parameters). ``bias`` applies to both pointwise layers and the depthwise conv.

    ``norm="layernorm"`` (default, as SpeechBrain and Mamba-ASR use) normalises each frame
    alone, so it is padding- and streaming-safe. ``norm="batchnorm"`` (the Conformer paper)
    stays selectable, but in training its statistics include the (zeroed) padded frames and
    depend on the batch; in eval it uses running statistics and is padding-safe too.
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 31,
        norm: str = "layernorm",
        activation: str = "swish",
        dropout: float = 0.0,
        causal: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_conv_options(kernel_size, norm, causal)
        factory = {"device": device, "dtype": dtype}
        self.kernel_size, self.causal = kernel_size, causal
        self.padding = (kernel_size - 1, 0) if causal else ((kernel_size - 1) // 2,) * 2
        self.layer_norm = nn.LayerNorm(d_model, **factory)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model, bias=bias, **factory)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, groups=d_model, bias=bias, padding=0, **factory
        )
        norm_cls = nn.LayerNorm if norm == "layernorm" else nn.BatchNorm1d
        self.norm = norm_cls(d_model, **factory)
        self.activation = make_activation(activation)
        self.pointwise_out = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)

    def _normalize(self, y: Tensor) -> Tensor:
        """(B, M, L) -> normalised (B, L, M)."""
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(y).transpose(1, 2)
        return self.norm(y.transpose(1, 2))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, L, M); lengths: (B,) valid frames or None. Returns (B, L, M), zero on padding."""
        mask = _frame_mask(x, lengths)
        y = F.glu(self.pointwise_in(self.layer_norm(x)), dim=-1)  # (B, L, M)
        y = zero_padding(y, mask).transpose(1, 2)  # (B, M, L): padding reads as zeros
        if self.depthwise._forward_pre_hooks:  # QAT's input quantizer: through the module
            y = self.depthwise(F.pad(y, self.padding))  # (B, M, L)
        else:  # in place, whatever y's layout (fused Triton kernels on CUDA)
            w, b = self.depthwise.weight[:, 0], self.depthwise.bias
            y = depthwise_conv1d(y, w, b, left=self.padding[0])  # (B, M, L)
        y = self.activation(self._normalize(y))  # (B, L, M)
        y = self.dropout(self.pointwise_out(y))
        return zero_padding(y, mask)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, causal={self.causal}"


def _check_conv_options(kernel_size: int, norm: str, causal: bool) -> None:
    if kernel_size < 1 or (not causal and kernel_size % 2 == 0):
        raise ValueError(
            f"kernel_size must be >= 1 and odd unless causal, got kernel_size={kernel_size}"
        )
    if norm not in CONV_NORMS:
        raise ValueError(f"norm must be one of {CONV_NORMS}, got {norm!r}")


class ConformerLayer(nn.Module):
    """Conformer block (macaron), SpeechBrain's ``ConformerEncoderLayer``.

    x + 1/2 FFN(LN x) -> x + MHSA(LN x) (``RelPosMHAXL``) -> x + Conv(x) -> LN(x + 1/2 FFN(LN x)).
    As in SpeechBrain, dropout acts inside the FFNs, on the attention weights and at the end of
    the convolution module, not on the attention output. ``causal`` makes the attention and the
    depthwise conv look only at the past. ``activation`` is used by the FFNs and the conv module.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        d_ffn: int,
        kernel_size: int = 31,
        dropout: float = 0.0,
        activation: str = "swish",
        conv_norm: str = "layernorm",
        causal: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.causal = causal
        self.ffn1 = _half_step_ffn(d_model, d_ffn, dropout, activation, factory)
        self.norm_mha = nn.LayerNorm(d_model, **factory)
        self.mha = RelPosMHAXL(d_model, nhead, dropout, **factory)
        self.conv = ConvolutionModule(
            d_model, kernel_size, conv_norm, activation, dropout, causal, bias, **factory
        )
        self.ffn2 = _half_step_ffn(d_model, d_ffn, dropout, activation, factory)
        self.norm_out = nn.LayerNorm(d_model, **factory)

    def forward(self, x: Tensor, lengths: Tensor | None, pos_emb: Tensor) -> Tensor:
        """x: (B, L, M); lengths: (B,) or None; pos_emb: (2L-1, M) from
        ``RelativePositionalEncoding``. Returns (B, L, M), zero on padded frames."""
        length = x.shape[1]
        mask = _frame_mask(x, lengths)  # (B, L), True on valid frames
        padding = None if mask is None else padded_frames(mask)  # (B, L), True on padded keys
        attn_mask = causal_mask(length, x.device) if self.causal else None  # (L, L)
        x = x + 0.5 * self.ffn1(x)
        x = x + self.mha(self.norm_mha(x), pos_emb, padding, attn_mask)
        x = x + self.conv(x, lengths)
        x = self.norm_out(x + 0.5 * self.ffn2(x))
        return zero_padding(x, mask)


def _make_mamba(
    d_model: int, mamba: Mapping[str, Any] | None, causal: bool, factory: dict[str, Any]
) -> Mamba | BiMamba:
    """BiMamba, or the causal Mamba when ``causal`` or the config says bidirectional=False."""
    options = {**DEFAULT_MAMBA, **(mamba or {})}
    bidirectional = options.pop("bidirectional")
    cls = BiMamba if bidirectional and not causal else Mamba
    return cls(d_model, **options, **factory)


class ConMambaLayer(nn.Module):
    """ConMamba block, xi-j/Mamba-ASR's ``ConmambaEncoderLayer``: a Conformer block whose
    attention is a bidirectional Mamba.

    x + 1/2 FFN(LN x) -> x + BiMamba(LN x) -> x + Conv(x) -> LN(x + 1/2 FFN(LN x)).
    ``mamba``: options for the Mamba block (``DEFAULT_MAMBA``: d_state 16, expand 2, d_conv 4,
    bidirectional True; other ``Mamba`` options pass through). ``bidirectional=False`` or
    ``causal=True`` use the causal ``Mamba``; ``causal`` also makes the conv module causal.
    Mamba-ASR passes GELU here (for the FFNs and the conv module), hence the default.
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
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
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.ffn1 = _half_step_ffn(d_model, d_ffn, dropout, activation, factory)
        self.norm_mamba = nn.LayerNorm(d_model, **factory)
        self.mamba = _make_mamba(d_model, mamba, causal, factory)
        self.conv = ConvolutionModule(
            d_model, kernel_size, conv_norm, activation, dropout, causal, bias, **factory
        )
        self.ffn2 = _half_step_ffn(d_model, d_ffn, dropout, activation, factory)
        self.norm_out = nn.LayerNorm(d_model, **factory)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, L, M); lengths: (B,) or None. Returns (B, L, M), zero on padded frames."""
        x = x + 0.5 * self.ffn1(x)
        x = x + self.mamba(self.norm_mamba(x), lengths)
        x = x + self.conv(x, lengths)
        x = self.norm_out(x + 0.5 * self.ffn2(x))
        return zero_padding(x, _frame_mask(x, lengths))


class TransformerEncoderLayer(nn.Module):
    """Transformer encoder layer, SpeechBrain's ``TransformerEncoderLayer`` (regular MHA).

    Pre-norm (``normalize_before=True``): x + Drop(MHA(LN x)) -> x + FFN(LN x).
    Post-norm: LN(x + Drop(MHA(x))) -> LN(x + FFN(x)). LayerNorm eps 1e-6 as SpeechBrain.
    Positions are absolute, added to the encoder input (see ``TransformerEncoder``).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        d_ffn: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        normalize_before: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalize_before = normalize_before
        self.norm1 = nn.LayerNorm(d_model, eps=1e-6, **factory)
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, **factory)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-6, **factory)
        self.ffn = FeedForward(d_model, d_ffn, dropout, activation, **factory)

    def _attention(self, x: Tensor, padding: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        return self.dropout(self.self_attn(x, x, x, padding, attn_mask))

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, L, M); lengths: (B,) or None; attn_mask: (L, L) bool, True = masked.
        Returns (B, L, M), zero on padded frames."""
        mask = _frame_mask(x, lengths)  # (B, L), True on valid frames
        padding = None if mask is None else padded_frames(mask)  # (B, L), True on padded keys
        if self.normalize_before:
            x = x + self._attention(self.norm1(x), padding, attn_mask)
            x = x + self.ffn(self.norm2(x))
        else:
            x = self.norm1(x + self._attention(x, padding, attn_mask))
            x = self.norm2(x + self.ffn(x))
        return zero_padding(x, mask)
