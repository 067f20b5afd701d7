"""CTC model: front end -> encoder -> linear -> log-softmax, trained with the CTC loss.

Shape key
    B: batch, F: feature frames, C: feature channels (mels), T: encoder frames, M: d_model,
    S: target tokens, V: vocabulary (blank included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamba_asr.models.losses import LossOutput, check_ctc_targets, check_reduction, ctc_loss

__all__ = ["CTCModel", "CTCOutput"]


@dataclass
class CTCOutput:
    """log_probs: (B, T, V) float32 log-probabilities; lengths: (B,) valid encoder frames."""

    log_probs: Tensor
    lengths: Tensor


class CTCModel(nn.Module):
    """Encoder-only CTC model (Mamba-ASR's CTC recipes).

    ``frontend(feats, feat_lengths) -> (x, lengths)`` subsamples (B, F, C) features to
    (B, T, M); ``encoder(x, lengths) -> x`` keeps the shape; ``ctc_lin`` (Linear M -> V, with
    bias) and a float32 log-softmax give the CTC posteriors.
    """

    def __init__(
        self,
        frontend: nn.Module,
        encoder: nn.Module,
        d_model: int,
        vocab_size: int,
        blank: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= blank < vocab_size:
            raise ValueError(f"blank must be in [0, vocab_size={vocab_size}), got {blank}")
        self.frontend, self.encoder = frontend, encoder
        self.vocab_size, self.blank = vocab_size, blank
        self.ctc_lin = nn.Linear(d_model, vocab_size, device=device, dtype=dtype)

    def forward(self, feats: Tensor, feat_lengths: Tensor) -> CTCOutput:
        """feats: (B, F, C); feat_lengths: (B,) valid feature frames."""
        x, lengths = self.frontend(feats, feat_lengths)  # (B, T, M), (B,)
        x = self.encoder(x, lengths)  # (B, T, M)
        log_probs = self.ctc_lin(x).float().log_softmax(dim=-1)  # (B, T, V)
        return CTCOutput(log_probs=log_probs, lengths=lengths)

    def loss(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        reduction: str = "batchmean",
    ) -> LossOutput:
        """CTC loss of padded targets (B, S) with target_lengths (B,), none empty.

        ``reduction`` as in ``mamba_asr.models.losses`` (default: sum over the batch / B).
        """
        check_reduction(reduction)
        check_ctc_targets(target_lengths)
        out = self(feats, feat_lengths)
        ctc = ctc_loss(out.log_probs, out.lengths, targets, target_lengths, self.blank, reduction)
        return LossOutput(loss=ctc, ctc=ctc, log_probs=out.log_probs, lengths=out.lengths)
