"""The n-best entry every search returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hypothesis"]


@dataclass(frozen=True)
class Hypothesis:
    """One decoded hypothesis; n-best lists are sorted by ``score``, best first.

    tokens: output ids (no blank, bos or eos); score: the ranking score of the search that found
    it (higher is better). The parts it was made of, where the search computed them:
    ctc_score: log CTC probability of ``tokens`` (prefix beam search: of the whole sequence;
    joint search: CTC prefix score of tokens + eos, i.e. the same); attention_score: sum of the
    decoder's log-probabilities, eos included; lm_score: sum of the external scorer's
    log-probabilities (unweighted).
    """

    tokens: list[int]
    score: float
    ctc_score: float | None = None
    attention_score: float | None = None
    lm_score: float | None = None
