"""Word and character error rates over a set of transcripts (jiwer).

They sit here, below evaluation and training, because both report them: ``mamba_asr.evaluate``
over a test set and the trainer over its validation set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ErrorRates", "error_rates"]


@dataclass(frozen=True)
class ErrorRates:
    """Word and character error rates (fractions, 0.25 = 25 %) over a whole set."""

    wer: float
    cer: float


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
    """Corpus WER and CER (jiwer): edit operations over all utterances / reference words or
    characters. Empty references are skipped (they have no words to count errors against)."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return ErrorRates(wer=math.nan, cer=math.nan)
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return ErrorRates(wer=float(jiwer.wer(refs, hyps)), cer=float(jiwer.cer(refs, hyps)))
