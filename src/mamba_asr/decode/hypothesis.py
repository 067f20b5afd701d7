"""The n-best entry every search returns, and the transducer beam search's hypothesis
bookkeeping, shared by its PyTorch, NumPy and MLX versions (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Expansion", "Hypothesis", "expand_hypotheses", "log_add"]

NEG_INF = float("-inf")


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


def log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), exact where either is -inf."""
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi)) if lo > NEG_INF else hi


@dataclass
class Expansion:
    """The hypotheses after one round of a frame, in order (utterance by utterance, best first):
    the parent each extends, the token it emitted (-1: blank), its score, utterance, whether it
    is still open in this frame (it emitted and the round was not the frame's last), its tokens
    and the frames they were emitted at."""

    parents: list[int]
    emits: list[int]
    scores: list[float]
    utts: list[int]
    opens: list[bool]
    tokens: list[tuple[int, ...]]
    frames: list[tuple[int, ...]]


def expand_hypotheses(
    top: Sequence[Sequence[float]],
    parent: Sequence[Sequence[int]],
    token: Sequence[Sequence[int]],
    tokens: Sequence[tuple[int, ...]],
    frames: Sequence[tuple[int, ...]],
    frame: int,
    blank: int,
    last: bool,
) -> Expansion:
    """One round of modified beam search's bookkeeping: top, parent, token (B, K) lists, each
    utterance's K best candidates (score, the hypothesis it extends, the token it adds), best
    first; -inf scores are skipped. A candidate that reaches a state another one already holds
    (same tokens, same openness) is merged into it by log-add, so the first of them keeps its
    place. ``tokens`` and ``frames`` are the current hypotheses' (``frame``: this frame's
    index)."""
    out = Expansion([], [], [], [], [], [], [])
    for b, (top_b, parent_b, token_b) in enumerate(zip(top, parent, token, strict=True)):
        seen: dict[tuple[tuple[int, ...], bool], int] = {}
        for s, p, k in zip(top_b, parent_b, token_b, strict=True):
            if s == NEG_INF:
                continue
            emit = k != blank
            key = tokens[p] + (k,) if emit else tokens[p]
            state = (key, emit and not last)  # (tokens, still open in this frame)
            j = seen.get(state)
            if j is not None:  # the same state by another path: merge
                out.scores[j] = log_add(out.scores[j], s)
                continue
            seen[state] = len(out.tokens)
            out.parents.append(p)
            out.emits.append(k if emit else -1)
            out.scores.append(s)
            out.utts.append(b)
            out.opens.append(state[1])
            out.tokens.append(key)
            out.frames.append(frames[p] + (frame,) if emit else frames[p])
    return out
