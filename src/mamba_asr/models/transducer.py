"""Streaming Mamba transducer (MCT): causal front end -> causal Mamba encoder, predictor, joiner.

Shape key
    B: batch, F: feature frames, C: feature channels (mels), T: encoder frames, M: d_model,
    S: target tokens, U: predictor steps (S + 1 in training), P: predictor_dim, J: joiner_dim,
    V: vocabulary (blank included), K: context_size.

Everything on the encoder side is causal and streams: ``forward_chunk`` from ``init_state``
gives ``encode``'s output chunk by chunk (the
``StreamingModel`` protocol of ``mamba_asr.models.streaming``) (see ``CausalConvFrontEnd`` for the chunk rule).
The loss builds the full (B, T, S + 1, V) joint and runs ``mamba_asr.ops.rnnt_loss.rnnt_loss``
on it (``rnnt_kind="full"``): fine for the small and base recipes with a 256-piece vocabulary
and 8x subsampling, but memory grows as T * S * V. ``rnnt_kind="pruned"`` runs the joiner only
on a band of R tokens per frame (``mamba_asr.ops.pruned_rnnt``), memory T * R * V.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mamba_asr.models.encoders import MambaEncoder, MambaEncoderState
from mamba_asr.models.losses import (
    LossOutput,
    check_ctc_targets,
    check_reduction,
    ctc_loss,
    reduce_loss,
)
from mamba_asr.models.seq2seq import Encoded
from mamba_asr.modules.causal_frontend import CausalFrontEndState
from mamba_asr.modules.masks import length_mask
from mamba_asr.ops.pruned_rnnt import (
    JoinerWeights,
    band_join,
    prune_ranges,
    pruned_transducer_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)
from mamba_asr.ops.rnnt_loss import rnnt_loss

__all__ = [
    "Joiner",
    "LSTMPredictor",
    "MambaEncoder",
    "MambaEncoderState",
    "StatelessPredictor",
    "TransducerModel",
    "TransducerState",
]

LSTMState = tuple[Tensor, Tensor]


# --- predictor and joiner ----------------------------------------------------------------------


class StatelessPredictor(nn.Module):
    """Stateless predictor (Ghodsi et al. 2020; icefall): embedding + causal depthwise conv
    over the last ``context_size`` tokens, then ReLU.

    State: (B, K-1) the previous K-1 tokens (``blank`` at the start); context_size 1 is a bigram
    predictor (embedding + ReLU, empty state).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        context_size: int = 2,
        blank: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        factory = {"device": device, "dtype": dtype}
        self.vocab_size, self.dim = vocab_size, dim
        self.context_size, self.blank = context_size, blank
        self.embedding = nn.Embedding(vocab_size, dim, **factory)
        self.conv = (
            nn.Conv1d(dim, dim, context_size, groups=dim, bias=False, **factory)
            if context_size > 1
            else None
        )

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """(B, K-1) tokens, all ``blank``."""
        device = self.embedding.weight.device if device is None else device
        return torch.full(
            (batch, self.context_size - 1), self.blank, dtype=torch.long, device=device
        )

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens: (B, U); state: (B, K-1) or None (start). Returns (B, U, P) and the new state."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        context = torch.cat([state.to(tokens.device).long(), tokens.long()], dim=1)  # (B, K-1+U)
        emb = self.embedding(context)  # (B, K-1+U, P)
        if self.conv is not None:
            emb = self.conv(emb.transpose(1, 2)).transpose(1, 2)  # (B, U, P)
        new_state = context[:, context.shape[1] - (self.context_size - 1) :]  # (B, K-1)
        return torch.relu(emb), new_state


class LSTMPredictor(nn.Module):
    """RNN-T prediction network: embedding -> one-layer LSTM -> Linear; state (h, c), each
    (1, B, P), zeros at the start."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        blank: int = 0,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.vocab_size, self.dim, self.blank = vocab_size, dim, blank
        self.embedding = nn.Embedding(vocab_size, dim, **factory)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, **factory)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim, **factory)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> LSTMState:
        """(h, c): zeros (1, B, P) each, in the parameters' dtype."""
        weight = self.embedding.weight
        device = weight.device if device is None else device
        zeros = torch.zeros(1, batch, self.dim, device=device, dtype=weight.dtype)
        return zeros, zeros.clone()

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """tokens: (B, U); state: (h, c) or None (start). Returns (B, U, P) and the new state."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        out, new_state = self.lstm(self.dropout(self.embedding(tokens.long())), state)
        return self.proj(out), new_state


class Joiner(nn.Module):
    """logits = out(tanh(enc_proj(enc) + pred_proj(pred))), enc (..., M), pred (..., P).

    The two inputs broadcast against each other: for the full lattice pass enc (B, T, 1, M) and
    pred (B, 1, U, P) to get (B, T, U, V). Decoding can precompute ``project_encoder`` and
    ``project_predictor`` (..., J) once and call ``join`` per step.
    """

    def __init__(
        self,
        d_model: int,
        predictor_dim: int,
        joiner_dim: int,
        vocab_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.enc_proj = nn.Linear(d_model, joiner_dim, **factory)
        self.pred_proj = nn.Linear(predictor_dim, joiner_dim, **factory)
        self.out = nn.Linear(joiner_dim, vocab_size, **factory)

    def project_encoder(self, enc: Tensor) -> Tensor:
        """(..., M) -> (..., J)."""
        return self.enc_proj(enc)

    def project_predictor(self, pred: Tensor) -> Tensor:
        """(..., P) -> (..., J)."""
        return self.pred_proj(pred)

    def join(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        """Projected (..., J) inputs, broadcast against each other -> logits (..., V)."""
        return self.out(torch.tanh(enc_proj + pred_proj))

    def join_band(self, enc_proj: Tensor, pred_proj: Tensor, ranges: Tensor) -> Tensor:
        """Projected enc (B, T, J) and pred (B, S + 1, J), ranges (B, T, R) of a pruned band ->
        logits (B, T, R, V): ``join`` at pred position ranges[b, t, r] (``ops.band_join``: on
        CUDA one kernel each way instead of gathering (B, T, R, J) copies)."""
        return self.out(band_join(enc_proj, pred_proj, ranges))

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """enc (..., M), pred (..., P), broadcast against each other -> logits (..., V)."""
        return self.join(self.project_encoder(enc), self.project_predictor(pred))


# --- the model ---------------------------------------------------------------------------------


class TransducerState(NamedTuple):
    """Streaming state of ``TransducerModel``'s encoder side (front end + encoder)."""

    frontend: CausalFrontEndState
    encoder: MambaEncoderState


class TransducerModel(nn.Module):
    """RNN-T model: causal front end -> causal encoder -> joiner with a predictor.

    ``frontend``: ``CausalConvFrontEnd`` (``forward(feats, lengths)``, ``init_state``,
    ``forward_chunk``); ``encoder``: ``MambaEncoder`` (same three); ``predictor``:
    ``StatelessPredictor`` or ``LSTMPredictor`` (``init_state(batch, device)``,
    ``forward(tokens, state) -> (out, state)``); ``joiner``: ``Joiner``. Training feeds the
    predictor [blank] + targets. Loss = (1 - aux_ctc_weight) * RNN-T + aux_ctc_weight * CTC,
    the CTC head (``ctc_lin``, Linear M -> V) existing only when aux_ctc_weight > 0.

    ``rnnt_kind``: ``"full"`` (the joiner on all (B, T, S + 1) pairs) or ``"pruned"``: two
    extra heads ``simple_am_proj`` (M -> V) and ``simple_lm_proj`` (P -> V) give the simple
    loss, whose posteriors choose ``prune_range`` tokens per frame; the joiner runs on that
    band only, and RNN-T = pruned + ``simple_loss_scale`` * simple. Decoding never uses the
    simple heads.
    """

    def __init__(
        self,
        frontend: nn.Module,
        encoder: nn.Module,
        vocab_size: int,
        predictor: nn.Module,
        joiner: Joiner,
        blank: int = 0,
        aux_ctc_weight: float = 0.0,
        d_model: int | None = None,
        rnnt_kind: str = "full",
        prune_range: int = 5,
        simple_loss_scale: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= blank < vocab_size:
            raise ValueError(f"blank must be in [0, vocab_size={vocab_size}), got {blank}")
        if not 0.0 <= aux_ctc_weight < 1.0:
            raise ValueError(f"aux_ctc_weight must be in [0, 1), got {aux_ctc_weight}")
        if rnnt_kind not in ("full", "pruned"):
            raise ValueError(f"rnnt_kind must be 'full' or 'pruned', got {rnnt_kind!r}")
        if prune_range < 2:
            raise ValueError(f"prune_range must be >= 2, got {prune_range}")
        self.rnnt_kind, self.prune_range = rnnt_kind, prune_range
        self.simple_loss_scale = simple_loss_scale
        self.simple_am_proj = self.simple_lm_proj = None
        if rnnt_kind == "pruned":
            factory = {"device": device, "dtype": dtype}
            self.simple_am_proj = nn.Linear(joiner.enc_proj.in_features, vocab_size, **factory)
            self.simple_lm_proj = nn.Linear(joiner.pred_proj.in_features, vocab_size, **factory)
        self.frontend, self.encoder = frontend, encoder
        self.predictor, self.joiner = predictor, joiner
        self.vocab_size, self.blank, self.aux_ctc_weight = vocab_size, blank, aux_ctc_weight
        self.ctc_lin = None
        if aux_ctc_weight > 0:
            d_model = joiner.enc_proj.in_features if d_model is None else d_model
            self.ctc_lin = nn.Linear(d_model, vocab_size, device=device, dtype=dtype)

    def encode(self, feats: Tensor, feat_lengths: Tensor) -> Encoded:
        """feats: (B, F, C); feat_lengths: (B,) -> memory (B, T, M) and its lengths (B,)."""
        x, lengths = self.frontend(feats, feat_lengths)  # (B, T, M), (B,)
        return Encoded(memory=self.encoder(x, lengths), lengths=lengths)

    def forward(self, feats: Tensor, feat_lengths: Tensor) -> Encoded:
        """Same as ``encode``."""
        return self.encode(feats, feat_lengths)

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TransducerState:
        """Start-of-stream state for ``batch`` streams (device/dtype default to the weights').

        TypeError if the front end or the encoder does not stream (e.g. the ``conv2d`` front end
        or a bidirectional encoder: use ``frontend.kind: causal`` and ``encoder_module: mamba``).
        """
        for name in ("frontend", "encoder"):
            part = getattr(self, name)
            if not hasattr(part, "init_state") or not hasattr(part, "forward_chunk"):
                raise TypeError(
                    f"the {name} ({type(part).__name__}) does not stream; streaming needs "
                    "frontend.kind 'causal' and encoder_module 'mamba'"
                )
        return TransducerState(
            frontend=self.frontend.init_state(batch, device, dtype),
            encoder=self.encoder.init_state(batch, device, dtype),
        )

    @property
    def subsampling(self) -> int:
        """Feature frames per encoder frame (the causal front end's; 1 for others)."""
        return int(getattr(self.frontend, "subsampling", 1))

    def forward_chunk(
        self, feats_chunk: Tensor, state: TransducerState
    ) -> tuple[Tensor, TransducerState]:
        """One step of the streaming protocol (``mamba_asr.models.streaming``): feats_chunk
        (B, t, C), the next frames (a multiple of ``subsampling`` except in the last chunk)
        -> memory (B, ceil(t / S), M) and the state after them."""
        x, frontend_state = self.frontend.forward_chunk(feats_chunk, state.frontend)
        memory, encoder_state = self.encoder.forward_chunk(x, state.encoder)
        return memory, TransducerState(frontend=frontend_state, encoder=encoder_state)

    def predictor_inputs(self, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """Padded targets (B, S) -> (B, S + 1) = [blank] + targets, blank past each length."""
        valid = length_mask(target_lengths, targets.shape[1], targets.device)  # (B, S)
        clean = targets.long().masked_fill(~valid, self.blank)
        return torch.cat([clean.new_full((clean.shape[0], 1), self.blank), clean], dim=1)

    def _full_rnnt(
        self, enc: Encoded, pred: Tensor, targets: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor, None]:
        """RNN-T over the full joint: memory (B, T, M), pred (B, S+1, P) -> (B,) losses, and
        the joint's logits (B, T, S+1, V) (no ranges: the whole lattice)."""
        logits = self.joiner(enc.memory[:, :, None, :], pred[:, None, :, :])  # (B, T, S+1, V)
        loss = rnnt_loss(
            logits.float(), targets.int(), enc.lengths.int(), lengths.int(), blank=self.blank,
            reduction="none",
        )  # fmt: skip
        return loss, logits, None

    def _pruned_rnnt(
        self, enc: Encoded, pred: Tensor, targets: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """pruned + simple_loss_scale * simple: memory (B, T, M), pred (B, S+1, P) -> (B,), and
        the band's logits (B, T, R, V) with its ranges (B, T, R)."""
        frame_lengths = enc.lengths.to(pred.device)
        layers = (self.simple_am_proj, self.simple_lm_proj, self.joiner.enc_proj,
                  self.joiner.pred_proj, self.joiner.out)  # fmt: skip
        if all(type(layer) is nn.Linear for layer in layers):  # not QAT's fake-quantized ones
            res = pruned_transducer_loss(
                enc.memory, pred, targets, frame_lengths, lengths,
                JoinerWeights.of(*layers),
                self.prune_range, blank=self.blank,
            )  # fmt: skip
            return res.pruned + self.simple_loss_scale * res.simple, res.logits, res.ranges
        simple = rnnt_loss_simple(
            self.simple_lm_proj(pred), self.simple_am_proj(enc.memory), targets, frame_lengths,
            lengths, blank=self.blank, reduction="none",
        )  # fmt: skip
        ranges = prune_ranges(
            simple.blank_posterior, simple.emit_posterior, frame_lengths, lengths, self.prune_range
        )  # (B, T, R)
        logits = self.joiner.join_band(
            self.joiner.project_encoder(enc.memory), self.joiner.project_predictor(pred), ranges
        )  # (B, T, R, V)
        pruned = rnnt_loss_pruned(
            logits, targets, ranges, frame_lengths, lengths, blank=self.blank, reduction="none"
        )
        return pruned.float() + self.simple_loss_scale * simple.loss.float(), logits, ranges

    def loss(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        reduction: str = "batchmean",
    ) -> LossOutput:
        """RNN-T loss (+ aux CTC) of padded targets (B, S) with target_lengths (B,).

        ``reduction`` as in ``mamba_asr.models.losses`` (default: sum over the batch / B).
        ``ctc`` of the result is the aux CTC loss, or None without a CTC head.
        """
        check_reduction(reduction)
        enc = self.encode(feats, feat_lengths)
        pred_in = self.predictor_inputs(targets, target_lengths)  # (B, S+1)
        pred, _ = self.predictor(pred_in)  # (B, S+1, P)
        target_lengths = target_lengths.to(pred.device)
        rnnt_fn = self._pruned_rnnt if self.rnnt_kind == "pruned" else self._full_rnnt
        per_utterance, lattice, ranges = rnnt_fn(enc, pred, pred_in[:, 1:], target_lengths)
        rnnt = reduce_loss(per_utterance, target_lengths, reduction)
        parts = {"lengths": enc.lengths, "lattice": lattice, "lattice_ranges": ranges}
        if self.ctc_lin is None:
            return LossOutput(loss=rnnt, ctc=None, attention=None, **parts)
        check_ctc_targets(target_lengths)
        log_probs = self.ctc_log_probs(enc.memory)  # (B, T, V)
        ctc = ctc_loss(log_probs, enc.lengths, targets, target_lengths, self.blank, reduction)
        loss = (1.0 - self.aux_ctc_weight) * rnnt + self.aux_ctc_weight * ctc
        return LossOutput(loss=loss, ctc=ctc, attention=None, log_probs=log_probs, **parts)

    def ctc_log_probs(self, memory: Tensor) -> Tensor:
        """memory (B, T, M) -> (B, T, V) float32 log-probabilities of the auxiliary CTC head;
        ValueError without one (aux_ctc_weight 0)."""
        if self.ctc_lin is None:
            raise ValueError("this transducer has no CTC head (aux_ctc_weight is 0)")
        return self.ctc_lin(memory).float().log_softmax(dim=-1)

    def lattice_logits(
        self, memory: Tensor, targets: Tensor, target_lengths: Tensor, ranges: Tensor | None
    ) -> Tensor:
        """The joiner's logits on a lattice: memory (B, T, M), targets (B, S) with
        target_lengths (B,); ranges (B, T, R) token positions of a pruned band (as the pruned
        loss picks them), or None for the full lattice -> (B, T, R or S + 1, V)."""
        pred, _ = self.predictor(self.predictor_inputs(targets, target_lengths))  # (B, S+1, P)
        if ranges is None:
            return self.joiner(memory[:, :, None, :], pred[:, None, :, :])
        return self.joiner.join_band(
            self.joiner.project_encoder(memory), self.joiner.project_predictor(pred), ranges
        )
