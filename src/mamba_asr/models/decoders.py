"""Autoregressive decoders of the sequence-to-sequence models: Transformer and Mamba.

Shape key
    B: batch, U: target steps, T: encoder frames, M: d_model, V: vocabulary.

Both decoders map ``tokens (B, U)`` with ``token_lengths (B,)`` and the encoder output
``memory (B, T, M)`` with ``memory_lengths (B,)`` to ``(B, U, M)``, zero on padded steps. Tokens
go through a scaled embedding (SpeechBrain's ``NormalizedEmbedding``: ``embedding * sqrt(M)``)
plus absolute sinusoidal positions from 0, then pre-norm layers, then a final LayerNorm. They
are causal: step u never sees tokens after u, so ``forward`` on any prefix gives that prefix's
outputs. Padding (in tokens or memory) never changes valid outputs. Layer structure, norms
(eps 1e-6) and biases follow xi-j/Mamba-ASR so parameter counts match the published models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamba_asr.modules.attention import MultiHeadAttention
from mamba_asr.modules.feedforward import FeedForward
from mamba_asr.modules.mamba import Mamba
from mamba_asr.modules.masks import causal_mask, key_padding_mask, length_mask
from mamba_asr.modules.positional import SinusoidalPositionalEncoding

__all__ = [
    "DECODERS",
    "MambaDecoder",
    "NormalizedEmbedding",
    "TransformerDecoder",
    "pack_memory_and_tokens",
]

NORM_EPS = 1e-6  # SpeechBrain's LayerNorm default, used by every decoder norm in Mamba-ASR
DEFAULT_MAMBA: Mapping[str, Any] = {"d_state": 16, "expand": 2, "d_conv": 4}


class NormalizedEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d_model): tokens (B, U) -> (B, U, d_model)."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.embedding(tokens) * self.scale


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class _Decoder(nn.Module):
    """Shared parts: ``embed`` (NormalizedEmbedding), ``pos`` (sinusoidal), ``layers`` (built by
    the subclass), ``norm`` (final LayerNorm); the forward pass around the layers."""

    layers: nn.ModuleList

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        _check_sizes(vocab_size=vocab_size, d_model=d_model, num_layers=num_layers)
        self.vocab_size, self.d_model, self.num_layers = vocab_size, d_model, num_layers
        self.embed = NormalizedEmbedding(vocab_size, d_model, device=device, dtype=dtype)
        self.pos = SinusoidalPositionalEncoding(d_model)
        self.norm = nn.LayerNorm(d_model, eps=NORM_EPS, device=device, dtype=dtype)

    def _run_layers(
        self, x: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        raise NotImplementedError

    def forward(
        self, tokens: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        """tokens: (B, U) ids; token_lengths: (B,); memory: (B, T, M) encoder output;
        memory_lengths: (B,) valid frames. Returns (B, U, M), zero on padded steps.

        Padding may hold anything (out-of-vocabulary ids, NaN): it is cleared first.
        """
        valid = length_mask(token_lengths, tokens.shape[1], tokens.device)  # (B, U)
        mem_valid = length_mask(memory_lengths, memory.shape[1], memory.device)  # (B, T)
        memory = memory.masked_fill(~mem_valid[..., None], 0.0)
        x = self.embed(tokens.masked_fill(~valid, 0))  # (B, U, M)
        x = x + self.pos(x)
        x = self._run_layers(x, token_lengths, memory, memory_lengths)
        x = self.norm(x)
        return x.masked_fill(~valid[..., None].to(x.device), 0.0)


def residual(
    x: Tensor, norm: nn.Module, branch: Callable[[Tensor], Tensor], normalize_before: bool
) -> Tensor:
    """x + branch(norm(x)) (pre-norm) or norm(x + branch(x)) (post-norm)."""
    if normalize_before:
        return x + branch(norm(x))
    return norm(x + branch(x))


class TransformerDecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, FFN; each a residual
    branch, with its LayerNorm before it (``normalize_before``) or after the addition."""

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
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, **factory)
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout=dropout, **factory)
        self.ffn = FeedForward(d_model, d_ffn, dropout=dropout, activation=activation, **factory)
        self.norm1 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.norm3 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, future: Tensor, memory: Tensor, memory_padding: Tensor) -> Tensor:
        """x: (B, U, M); future: (U, U) bool, True above the diagonal; memory: (B, T, M);
        memory_padding: (B, T) bool, True on padded frames. Returns (B, U, M)."""

        def self_branch(h: Tensor) -> Tensor:
            return self.dropout1(self.self_attn(h, h, h, attn_mask=future))

        def cross_branch(h: Tensor) -> Tensor:
            return self.dropout2(
                self.cross_attn(h, memory, memory, key_padding_mask=memory_padding)
            )

        pre = self.normalize_before
        x = residual(x, self.norm1, self_branch, pre)
        x = residual(x, self.norm2, cross_branch, pre)
        return residual(x, self.norm3, self.ffn, pre)  # FeedForward ends with its dropout


class TransformerDecoder(_Decoder):
    """SpeechBrain/Mamba-ASR Transformer decoder.

    tokens -> embedding * sqrt(M) + sinusoidal positions -> ``num_layers`` x (causal self-attention,
    cross-attention, FFN) -> LayerNorm. Self-attention needs only the causal mask: padded steps
    come after every valid one. Cross-attention masks padded encoder frames.

    Options: vocab_size, d_model, num_layers, nhead, d_ffn, dropout, activation ("gelu", "relu",
    "swish"), normalize_before (pre-norm, the default), device/dtype for the parameters;
    ``mamba`` is accepted and unused (both decoders take the same options).
    Every weight matrix (embedding, attention, FFN) starts Xavier-normal as in SpeechBrain's
    ``TransformerASR._init_params``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        nhead: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        activation: str = "gelu",
        normalize_before: bool = True,
        mamba: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(vocab_size, d_model, num_layers, device, dtype)
        _check_sizes(nhead=nhead, d_ffn=d_ffn)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                d_model,
                nhead,
                d_ffn,
                dropout=dropout,
                activation=activation,
                normalize_before=normalize_before,
                device=device,
                dtype=dtype,
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-normal for every parameter with more than one dimension."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)

    def _run_layers(
        self, x: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        future = causal_mask(x.shape[1], x.device)  # (U, U)
        memory_padding = key_padding_mask(memory_lengths.to(memory.device), memory.shape[1])
        for layer in self.layers:
            x = layer(x, future, memory, memory_padding)
        return x


def pack_memory_and_tokens(
    memory: Tensor, memory_lengths: Tensor, x: Tensor, token_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate each utterance's valid memory frames and valid target steps, padding after.

    memory: (B, T, M), memory_lengths: (B,); x: (B, U, M), token_lengths: (B,).
    Returns ``packed`` (B, T+U, M) whose row b is [memory[b, :T_b]; x[b, :U_b]; padding],
    ``lengths`` (B,) = T_b + U_b, and ``token_index`` (B, U) = T_b + u, where step u of x sits in
    ``packed``. Gathers only (no host syncs); padding holds copies of other rows' frames, so
    consumers must mask it by ``lengths``.
    """
    batch, frames, width = memory.shape
    steps = x.shape[1]
    mem_len = memory_lengths.to(memory.device).long()[:, None]  # (B, 1)
    pos = torch.arange(frames + steps, device=memory.device)[None, :]  # (1, T+U)
    # index into cat([memory, x]): frame p of memory while p < T_b, then step p - T_b of x
    source = torch.where(pos < mem_len, pos, frames + pos - mem_len).clamp(max=frames + steps - 1)
    both = torch.cat([memory, x], dim=1)  # (B, T+U, M)
    packed = both.gather(1, source[..., None].expand(batch, frames + steps, width))
    lengths = mem_len[:, 0] + token_lengths.to(memory.device).long()  # (B,)
    token_index = mem_len + torch.arange(steps, device=memory.device)[None, :]  # (B, U)
    return packed, lengths, token_index


class MambaDecoderLayer(nn.Module):
    """Mamba-ASR decoder layer: causal self-Mamba over the target, "cross-Mamba" (a causal Mamba
    over [encoder output ; target], kept at the target steps), FFN; residuals as in
    ``TransformerDecoderLayer``. The encoder output enters the cross-Mamba un-normalised."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        normalize_before: bool = True,
        mamba: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        config = dict(DEFAULT_MAMBA if mamba is None else mamba)
        config.pop("bidirectional", None)  # the decoder is always causal
        self.normalize_before = normalize_before
        self.self_mamba = Mamba(d_model, **config, **factory)
        self.cross_mamba = Mamba(d_model, **config, **factory)
        self.ffn = FeedForward(d_model, d_ffn, dropout=dropout, activation=activation, **factory)
        self.norm1 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.norm3 = nn.LayerNorm(d_model, eps=NORM_EPS, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _cross(
        self, h: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        """Cross-Mamba over each utterance's [memory ; h], read back at h's steps: (B, U, M)."""
        packed, lengths, token_index = pack_memory_and_tokens(
            memory, memory_lengths, h, token_lengths
        )
        out = self.cross_mamba(packed, lengths)  # (B, T+U, M), zero past each length
        return out.gather(1, token_index[..., None].expand_as(h))  # (B, U, M)

    def forward(
        self, x: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        """x: (B, U, M); token_lengths: (B,); memory: (B, T, M); memory_lengths: (B,)."""

        def self_branch(h: Tensor) -> Tensor:
            return self.dropout1(self.self_mamba(h, token_lengths))

        def cross_branch(h: Tensor) -> Tensor:
            return self.dropout2(self._cross(h, token_lengths, memory, memory_lengths))

        pre = self.normalize_before
        x = residual(x, self.norm1, self_branch, pre)
        x = residual(x, self.norm2, cross_branch, pre)
        return residual(x, self.norm3, self.ffn, pre)  # FeedForward ends with its dropout


class MambaDecoder(_Decoder):
    """xi-j/Mamba-ASR's Mamba decoder.

    tokens -> embedding * sqrt(M) + sinusoidal positions -> ``num_layers`` x (self-Mamba,
    cross-Mamba, FFN) -> LayerNorm. For a padded batch the cross-Mamba input is packed per
    utterance (``pack_memory_and_tokens``) so valid encoder frames are directly followed by that
    utterance's valid target steps, as when it is decoded alone.

    Options: vocab_size, d_model, num_layers, d_ffn, dropout, activation, normalize_before,
    mamba (``Mamba`` keyword options; default d_state 16, expand 2, d_conv 4; a
    "bidirectional" key is ignored, the decoder is causal), device/dtype for the parameters;
    ``nhead`` is accepted and unused (both decoders take the same options).
    The embedding and FFN weights start Xavier-normal as in SpeechBrain; the Mamba blocks keep
    their own initialisation (the original's blanket Xavier also overwrote ``A_log``).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        nhead: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        activation: str = "gelu",
        normalize_before: bool = True,
        mamba: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(vocab_size, d_model, num_layers, device, dtype)
        _check_sizes(d_ffn=d_ffn)
        self.layers = nn.ModuleList(
            MambaDecoderLayer(
                d_model,
                d_ffn,
                dropout=dropout,
                activation=activation,
                normalize_before=normalize_before,
                mamba=mamba,
                device=device,
                dtype=dtype,
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-normal for the embedding and the FFN weight matrices."""
        nn.init.xavier_normal_(self.embed.embedding.weight)
        for layer in self.layers:
            for param in layer.ffn.parameters():
                if param.dim() > 1:
                    nn.init.xavier_normal_(param)

    def _run_layers(
        self, x: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        for layer in self.layers:
            x = layer(x, token_lengths, memory, memory_lengths)
        return x


DECODERS: dict[str, type[_Decoder]] = {"transformer": TransformerDecoder, "mamba": MambaDecoder}
