"""Multi-head attention: standard (Transformer) and relative-position (Transformer-XL, Conformer).

Shape key
    B: batch, L: query frames, S: key frames, M: d_model, H: heads, E: head dim (M / H),
    P: relative positions (2L - 1).

Masks are bool with True = masked (may NOT attend): ``key_padding_mask`` (B, S) for padded
keys, ``attn_mask`` (L, S) or (B, L, S) for structure (e.g. causal). A query row whose keys are
all masked (a padded query in an empty utterance, say) gives a zero output, never NaN. Both
classes run through ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "RelPosMHAXL", "attend", "merge_masks", "rel_shift"]


def merge_masks(
    key_padding_mask: Tensor | None, attn_mask: Tensor | None, batch: int
) -> Tensor | None:
    """Combine (B, S) and (L, S) / (B, L, S) bool masks into one (B|1, 1, L|1, S), True = masked."""
    mask = None
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[0] != batch:
            raise ValueError(
                f"key_padding_mask must be (B={batch}, S), got {tuple(key_padding_mask.shape)}"
            )
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if attn_mask is not None:
        if attn_mask.dim() not in (2, 3):
            raise ValueError(f"attn_mask must be (L, S) or (B, L, S), got {tuple(attn_mask.shape)}")
        structure = attn_mask.reshape(-1, 1, *attn_mask.shape[-2:])  # (B|1, 1, L, S)
        mask = structure if mask is None else mask | structure
    return mask


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + bias, masked) v, per head.

    q: (B, H, L, E); k, v: (B, H, S, E); mask: bool broadcastable to (B, H, L, S), True = masked;
    bias: (B, H, L, S) added to the scaled scores. Returns (B, H, L, E); rows with every key
    masked are zero (they attend everywhere inside the kernel, then are cleared).
    """
    empty = None
    if mask is not None:
        empty = mask.all(dim=-1, keepdim=True)  # (B|1, 1, L|1, 1)
        mask = mask & ~empty
        attn = ~mask if bias is None else bias.masked_fill(mask, float("-inf"))
    else:
        attn = bias
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, dropout_p=dropout_p, scale=scale)
    return out if empty is None else out.masked_fill(empty, 0.0)


def rel_shift(x: Tensor) -> Tensor:
    """(B, H, L, 2L-1) scores against distances L-1..-(L-1) -> (B, H, L, L) against keys.

    out[..., i, j] = x[..., i, L-1-i+j], the score of query i against relative distance i-j
    (Transformer-XL's pad-and-reshape trick: views and one pad, no gather, no host sync).
    """
    b, h, length, positions = x.shape
    x = F.pad(x, (1, 0))  # (B, H, L, 2L): a zero column on the left
    x = x.reshape(b, h, positions + 1, length)[:, :, 1:]  # (B, H, 2L-1, L), first row dropped
    return x.reshape(b, h, length, positions)[..., :length]  # (B, H, L, L)


def _check_heads(d_model: int, nhead: int) -> int:
    if nhead < 1 or d_model % nhead:
        raise ValueError(f"nhead must be >= 1 and divide d_model={d_model}, got nhead={nhead}")
    return d_model // nhead


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (self or cross), as ``torch.nn.MultiheadAttention``.

    ``in_proj`` (M -> 3M, with bias; rows q, k, v as torch's ``in_proj_weight``) and
    ``out_proj`` (M -> M, with bias): 4 M^2 + 4 M parameters. Dropout acts on the attention
    weights.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.nhead = d_model, nhead
        self.head_dim = _check_heads(d_model, nhead)
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        nn.init.xavier_uniform_(self.in_proj.weight)
        if bias:
            nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, T, M) -> (B, H, T, E)."""
        return x.unflatten(-1, (self.nhead, self.head_dim)).transpose(1, 2)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs (B, L|S, M) -> q (B, H, L, E), k and v (B, H, S, E)."""
        if query is key and key is value:  # self-attention: one matmul
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            weights = self.in_proj.weight.chunk(3, dim=0)
            biases = (None,) * 3 if self.in_proj.bias is None else self.in_proj.bias.chunk(3)
            q, k, v = (
                F.linear(t, w, b)
                for t, w, b in zip((query, key, value), weights, biases, strict=True)
            )
        return self._heads(q), self._heads(k), self._heads(v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """query: (B, L, M); key, value: (B, S, M); key_padding_mask: (B, S); attn_mask: (L, S)
        or (B, L, S); masks bool, True = masked. Returns (B, L, M)."""
        q, k, v = self._project(query, key, value)
        mask = merge_masks(key_padding_mask, attn_mask, query.shape[0])
        dropout_p = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask=mask, dropout_p=dropout_p)  # (B, H, L, E)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, M)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, dropout={self.dropout}"


class RelPosMHAXL(nn.Module):
    """Transformer-XL relative-position self-attention, SpeechBrain's ``RelPosMHAXL`` layout.

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_pos r_{i-j}) / sqrt(E), with per-head
    content bias ``pos_bias_u`` and position bias ``pos_bias_v`` (H, E), r the sinusoidal
    encoding of the distance i - j (``RelativePositionalEncoding``) and W_pos = ``linear_pos``
    (no bias). ``in_proj`` (M -> 3M) has no bias; ``out_proj`` has one: 5 M^2 + 3 M parameters.
    Dropout acts on the attention weights.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.nhead = d_model, nhead
        self.head_dim = _check_heads(d_model, nhead)
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=False, **factory)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=True, **factory)
        self.pos_bias_u = nn.Parameter(torch.empty(nhead, self.head_dim, **factory))
        self.pos_bias_v = nn.Parameter(torch.empty(nhead, self.head_dim, **factory))
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _position_scores(self, q: Tensor, pos_emb: Tensor, scale: float) -> Tensor:
        """q: (B, L, H, E); pos_emb: (2L-1, M) -> position term (B, H, L, L), already scaled."""
        p = self.linear_pos(pos_emb).reshape(-1, self.nhead, self.head_dim)  # (P, H, E)
        qv = (q + self.pos_bias_v).transpose(1, 2) * scale  # (B, H, L, E)
        scores = qv @ p.permute(1, 2, 0)  # (B, H, L, P)
        return rel_shift(scores)  # (B, H, L, L)

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """x: (B, L, M); pos_emb: (2L-1, M) (or (1, 2L-1, M)) for distances L-1..-(L-1);
        key_padding_mask: (B, L); attn_mask: (L, L) or (B, L, L); True = masked.
        Returns (B, L, M)."""
        q, k, v = self.in_proj(x).unflatten(-1, (3, self.nhead, self.head_dim)).unbind(2)
        scale = self.head_dim**-0.5
        bias = self._position_scores(q, pos_emb, scale)  # (B, H, L, L)
        qu = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, L, E)
        mask = merge_masks(key_padding_mask, attn_mask, x.shape[0])
        dropout_p = self.dropout if self.training else 0.0
        out = attend(
            qu, k.transpose(1, 2), v.transpose(1, 2), mask, bias, dropout_p, scale
        )  # (B, H, L, E)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, M)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, dropout={self.dropout}"
