"""Joint CTC/attention sequence-to-sequence model (Mamba-ASR's S2S recipes).

Shape key
    B: batch, F: feature frames, C: feature channels (mels), T: encoder frames, M: d_model,
    S: target tokens, U: decoder steps (S + 1), V: vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamba_asr.models.losses import (
    LossOutput,
    check_ctc_targets,
    check_reduction,
    ctc_loss,
    label_smoothed_nll,
)
from mamba_asr.modules.masks import length_mask

__all__ = ["DecoderIO", "Encoded", "Seq2SeqModel", "Seq2SeqOutput", "add_bos_eos"]


@dataclass
class DecoderIO:
    """Teacher-forcing pair built from padded targets.

    inputs: (B, S+1) = [bos] + targets; targets: (B, S+1) = targets + [eos], eos at each
    utterance's own end; lengths: (B,) = target_lengths + 1. Both are ``pad`` past ``lengths``.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor


@dataclass
class Encoded:
    """memory: (B, T, M) encoder output; lengths: (B,) valid encoder frames."""

    memory: Tensor
    lengths: Tensor


@dataclass
class Seq2SeqOutput:
    """Everything one training forward pass computes.

    encoder_out: (B, T, M); lengths: (B,) valid encoder frames; ctc_log_probs: (B, T, V);
    decoder_log_probs: (B, U, V) over ``decoder.targets``; decoder: the teacher-forcing
    inputs, targets and lengths (``DecoderIO``). Log-probabilities are float32.
    """

    encoder_out: Tensor
    lengths: Tensor
    ctc_log_probs: Tensor
    decoder_log_probs: Tensor
    decoder: DecoderIO


def add_bos_eos(targets: Tensor, target_lengths: Tensor, bos: int, eos: int, pad: int) -> DecoderIO:
    """Padded targets (B, S) with target_lengths (B,) -> ``DecoderIO`` (tensor ops only).

    Whatever the padding of ``targets`` held, the outputs hold ``pad`` past each length.
    """
    batch, steps = targets.shape
    lengths = target_lengths.to(targets.device).long()
    valid = length_mask(lengths, steps, targets.device)  # (B, S)
    clean = targets.long().masked_fill(~valid, pad)
    pad_col = clean.new_full((batch, 1), pad)
    inputs = torch.cat([clean.new_full((batch, 1), bos), clean], dim=1)  # (B, S+1)
    with_eos = torch.cat([clean, pad_col], dim=1).scatter(
        1, lengths[:, None], clean.new_full((batch, 1), eos)
    )  # (B, S+1), eos at index target_lengths[b]
    return DecoderIO(inputs=inputs, targets=with_eos, lengths=lengths + 1)


class Seq2SeqModel(nn.Module):
    """Front end -> encoder -> (CTC head, autoregressive decoder); the joint CTC/attention loss.

    ``frontend(feats, feat_lengths) -> (x, lengths)`` and ``encoder(x, lengths) -> x`` give the
    memory (B, T, M); ``ctc_lin`` (Linear M -> V) + log-softmax is the CTC branch. ``decoder``
    (``TransformerDecoder`` or ``MambaDecoder``, ``forward(tokens, token_lengths, memory,
    memory_lengths) -> (B, U, M)``) reads [bos] + targets; ``seq_lin`` (Linear M -> V) +
    log-softmax scores targets + [eos]. Loss = ctc_weight * CTC + (1 - ctc_weight) *
    label-smoothed KL (``label_smoothed_nll``, targets equal to ``pad`` ignored as in
    SpeechBrain, where id 0 is pad, blank and unk at once).
    """

    def __init__(
        self,
        frontend: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        d_model: int,
        vocab_size: int,
        ctc_weight: float = 0.3,
        label_smoothing: float = 0.1,
        blank: int = 0,
        pad: int = 0,
        bos: int = 1,
        eos: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        for name, index in {"blank": blank, "pad": pad, "bos": bos, "eos": eos}.items():
            if not 0 <= index < vocab_size:
                raise ValueError(f"{name} must be in [0, vocab_size={vocab_size}), got {index}")
        if pad in (bos, eos):
            raise ValueError(f"pad ({pad}) must differ from bos ({bos}) and eos ({eos})")
        self.frontend, self.encoder, self.decoder = frontend, encoder, decoder
        self.vocab_size = vocab_size
        self.ctc_weight, self.label_smoothing = ctc_weight, label_smoothing
        self.blank, self.pad, self.bos, self.eos = blank, pad, bos, eos
        self.ctc_lin = nn.Linear(d_model, vocab_size, device=device, dtype=dtype)
        self.seq_lin = nn.Linear(d_model, vocab_size, device=device, dtype=dtype)

    def encode(self, feats: Tensor, feat_lengths: Tensor) -> Encoded:
        """feats: (B, F, C); feat_lengths: (B,) -> memory (B, T, M) and its lengths (B,)."""
        x, lengths = self.frontend(feats, feat_lengths)  # (B, T, M), (B,)
        return Encoded(memory=self.encoder(x, lengths), lengths=lengths)

    def ctc_log_probs(self, memory: Tensor) -> Tensor:
        """memory: (B, T, M) -> (B, T, V) float32 CTC log-probabilities."""
        return self.ctc_lin(memory).float().log_softmax(dim=-1)

    def decode(
        self, tokens: Tensor, token_lengths: Tensor, memory: Tensor, memory_lengths: Tensor
    ) -> Tensor:
        """tokens: (B, U) starting with bos; token_lengths: (B,) -> (B, U, V) float32
        log-probabilities of the next token at every step (causal: any prefix works)."""
        hidden = self.decoder(tokens, token_lengths, memory, memory_lengths)  # (B, U, M)
        return self.seq_lin(hidden).float().log_softmax(dim=-1)

    def forward(
        self, feats: Tensor, feat_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Seq2SeqOutput:
        """feats: (B, F, C); feat_lengths: (B,); targets: (B, S) padded ids (no bos/eos);
        target_lengths: (B,)."""
        enc = self.encode(feats, feat_lengths)
        io = add_bos_eos(targets, target_lengths, self.bos, self.eos, self.pad)
        return Seq2SeqOutput(
            encoder_out=enc.memory,
            lengths=enc.lengths,
            ctc_log_probs=self.ctc_log_probs(enc.memory),
            decoder_log_probs=self.decode(io.inputs, io.lengths, enc.memory, enc.lengths),
            decoder=io,
        )

    def loss(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        reduction: str = "batchmean",
    ) -> LossOutput:
        """Joint loss of padded targets (B, S) with target_lengths (B,), none empty.

        ``reduction`` applies to both parts, as in ``mamba_asr.models.losses`` (default: sums
        over the batch divided by B, the Mamba-ASR recipes' ``batchmean``).
        """
        check_reduction(reduction)
        check_ctc_targets(target_lengths)
        out = self(feats, feat_lengths, targets, target_lengths)
        ctc = ctc_loss(
            out.ctc_log_probs, out.lengths, targets, target_lengths, self.blank, reduction
        )
        attention = label_smoothed_nll(
            out.decoder_log_probs,
            out.decoder.targets,
            out.decoder.lengths,
            smoothing=self.label_smoothing,
            pad_index=self.pad,
            reduction=reduction,
        )
        loss = self.ctc_weight * ctc + (1.0 - self.ctc_weight) * attention
        return LossOutput(loss=loss, ctc=ctc, attention=attention, log_probs=out.ctc_log_probs,
                          lengths=out.lengths)  # fmt: skip
