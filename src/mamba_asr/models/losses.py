"""Training losses of the research models: CTC and the label-smoothed attention loss.

Shape key
    B: batch, T: encoder frames, U: decoder steps, S: target tokens, V: vocabulary.

Both losses take log-probabilities (``log_softmax`` outputs) and integer lengths, and share one
set of reductions (``REDUCTIONS``):

- ``"batchmean"``: sum over the whole batch divided by B, the number of utterances (SpeechBrain's
  ``batchmean``, used by the Mamba-ASR recipes); a long utterance weighs more than a short one.
- ``"sum"``: sum over the batch, so a batch's loss is the sum of its utterances' losses.
- ``"mean"``: each utterance's loss divided by its own number of target tokens, then averaged
  over the batch (torch's ``ctc_loss`` ``"mean"``).
- ``"none"``: one loss per utterance, (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mamba_asr.modules.masks import length_mask

__all__ = [
    "REDUCTIONS",
    "LossOutput",
    "check_ctc_targets",
    "check_reduction",
    "ctc_loss",
    "label_smoothed_nll",
    "reduce_loss",
]

REDUCTIONS = ("batchmean", "sum", "mean", "none")


@dataclass
class LossOutput:
    """A model's training loss and its parts, each reduced the same way.

    loss: what to back-propagate (``ctc_weight * ctc + (1 - ctc_weight) * attention`` for a
    sequence-to-sequence model, ``ctc`` for a CTC model).
    ctc: the CTC part. attention: the label-smoothed decoder part, None for a CTC model.

    What knowledge distillation (``mamba_asr.train.distill``) compares with a teacher, None
    where the model has none: log_probs (B, T, V) float32, the CTC head's log-probabilities;
    lengths (B,), the valid encoder frames; lattice (B, T, R, V), a transducer's joiner logits
    on the lattice its RNN-T loss used (R = U + 1 for the full loss), with lattice_ranges
    (B, T, R), the token position of each row of the pruned band (None for the full lattice).
    """

    loss: Tensor
    ctc: Tensor | None
    attention: Tensor | None = None
    log_probs: Tensor | None = None
    lengths: Tensor | None = None
    lattice: Tensor | None = None
    lattice_ranges: Tensor | None = None


def check_reduction(reduction: str) -> None:
    """ValueError naming the allowed values if ``reduction`` is not one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(per_utterance: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    """Reduce (B,) per-utterance losses as described in the module docstring."""
    check_reduction(reduction)
    if reduction == "none":
        return per_utterance
    if reduction == "sum":
        return per_utterance.sum()
    if reduction == "batchmean":
        return per_utterance.sum() / per_utterance.shape[0]
    tokens = target_lengths.to(per_utterance.device, per_utterance.dtype).clamp_min(1)
    return (per_utterance / tokens).mean()


def _xlogx(x: float) -> float:
    return x * math.log(x) if x > 0 else 0.0


def label_smoothed_nll(
    log_probs: Tensor,
    targets: Tensor,
    lengths: Tensor,
    smoothing: float = 0.1,
    pad_index: int | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    """KL divergence from the label-smoothed target distribution q to the model's p.

    log_probs: (B, U, V) log-probabilities; targets: (B, U) token ids; lengths: (B,) valid steps.

    q puts ``1 - smoothing`` on the target and ``smoothing / (V - 1)`` on every other token, so
    at one step the loss is ``sum_v q_v (log q_v - log p_v)``: the smoothed cross-entropy minus
    q's (constant) entropy; with ``smoothing=0`` it is the plain NLL ``-log p(target)``. Steps at
    or past an utterance's length are ignored, and so are steps whose target equals
    ``pad_index`` when it is given (SpeechBrain ignores every target equal to its pad id).

    With ``reduction="batchmean"`` this is SpeechBrain's ``kldiv_loss(log_probs, targets,
    label_smoothing=smoothing, pad_idx=pad_index, reduction="batchmean")``: the sum over all
    valid steps of all utterances divided by B, the batch size (not by the number of tokens).
    See the module docstring for the other reductions. Computed in float32 without building q.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    vocab = log_probs.shape[-1]
    if vocab < 2 and smoothing > 0:
        raise ValueError(f"label smoothing needs a vocabulary of at least 2, got {vocab}")
    lp = log_probs.float()
    valid = length_mask(lengths, targets.shape[1], targets.device)  # (B, U)
    if pad_index is not None:
        valid = valid & (targets != pad_index)
    safe_targets = targets.masked_fill(~valid, 0).long()
    target_lp = lp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (B, U)
    off = smoothing / (vocab - 1) if vocab > 1 else 0.0
    cross = (1.0 - smoothing) * target_lp  # sum_v q_v log p_v, without building q (B, U, V)
    if smoothing > 0:
        cross = cross + off * (lp.sum(-1) - target_lp)
    neg_entropy = _xlogx(1.0 - smoothing) + (vocab - 1) * _xlogx(off)  # sum_v q_v log q_v
    per_step = (neg_entropy - cross).masked_fill(~valid, 0.0)  # (B, U)
    return reduce_loss(per_step.sum(-1), valid.sum(-1), reduction)


def check_ctc_targets(target_lengths: Tensor) -> None:
    """ValueError naming the utterances whose CTC target is empty (target_lengths (B,) <= 0)."""
    # torch's ctc_loss copies the lengths to the host anyway, so this check adds no sync of note
    lengths = target_lengths.detach().cpu()
    empty = (lengths <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"CTC targets must not be empty: utterance(s) {empty} of the batch have "
            "target_lengths 0; drop empty transcripts from the data"
        )


def ctc_loss(
    log_probs: Tensor,
    input_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "batchmean",
) -> Tensor:
    """CTC loss: torch's ``ctc_loss`` on batch-first inputs, in float32, ``zero_infinity=True``.

    log_probs: (B, T, V) log-probabilities; input_lengths: (B,) valid frames;
    targets: (B, S) padded token ids (never ``blank`` on valid positions); target_lengths: (B,).

    Raises ValueError if any target is empty. A target that cannot be aligned in its frames
    (more tokens plus repeats than frames) gets loss 0 and no gradient (``zero_infinity``).
    With ``reduction="batchmean"`` the sum of the utterances' negative log-likelihoods is divided
    by B (SpeechBrain's ``ctc_loss(..., reduction="batchmean")``); see the module docstring.
    """
    check_reduction(reduction)
    check_ctc_targets(target_lengths)
    per_utterance = F.ctc_loss(
        log_probs.float().transpose(0, 1),  # (T, B, V)
        targets.long(),
        input_lengths.long(),
        target_lengths.long(),
        blank=blank,
        reduction="none",
        zero_infinity=True,
    )  # (B,)
    return reduce_loss(per_utterance, target_lengths, reduction)
