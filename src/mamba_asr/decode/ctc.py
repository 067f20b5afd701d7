"""CTC decoding: best path (greedy) and prefix beam search with an optional prefix scorer.

Shape key
    B: batch, T: frames, V: vocabulary (blank included), H: live prefixes of one utterance,
    K: candidate tokens of one frame.

The prefix beam search follows Hannun et al. (2014), "First-pass large vocabulary continuous
speech recognition using bi-directional recurrent DNNs", in log space: every prefix keeps the
probability of its alignments that end in blank and of those that end in its last label. The
per-frame work is numpy over (H, K) arrays; Python touches only the <= beam prefixes that
survive a frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mamba_asr.decode.hypothesis import Hypothesis
from mamba_asr.modules.masks import length_mask

__all__ = ["PrefixScorer", "best_path_score", "ctc_greedy", "ctc_prefix_beam_search", "ctc_runs"]

NEG_INF = float("-inf")

PrefixScorer = Callable[[Sequence[tuple[int, ...]], np.ndarray], np.ndarray]
"""A prefix scorer (e.g. a language model) for shallow fusion: ``scorer(prefixes, tokens)``
with H prefixes (tuples of ids) and tokens (K,) returns (H, K) log-probabilities of each token
following each prefix. One call per frame scores every live prefix against every candidate."""


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    log_probs: (B, T, V); lengths: (B,) valid frames. Returns B lists of token ids.
    """
    best = log_probs.argmax(dim=-1)  # (B, T)
    valid = length_mask(lengths, best.shape[1], best.device)  # (B, T)
    prev = torch.cat([best.new_full((best.shape[0], 1), -1), best[:, :-1]], dim=1)  # (B, T)
    keep = valid & (best != blank) & (best != prev)  # (B, T): first frame of each non-blank run
    return [row[mask].tolist() for row, mask in zip(best, keep, strict=True)]


def ctc_runs(path: list[int], blank: int = 0) -> list[tuple[int, int, int]]:
    """The tokens of one best path (a label per frame) as (token, first frame, last frame) of
    each collapsed run; the tokens are ``ctc_greedy``'s."""
    out: list[tuple[int, int, int]] = []
    prev = -1
    for t, label in enumerate(path):
        if label != blank and label == prev and out:
            out[-1] = (label, out[-1][1], t)
        elif label != blank:
            out.append((label, t, t))
        prev = label
    return out


def best_path_score(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """log_probs: (B, T, V); lengths: (B,) -> (B,) log-probability of the best path."""
    valid = length_mask(lengths, log_probs.shape[1], log_probs.device)  # (B, T)
    return log_probs.max(dim=-1).values.masked_fill(~valid, 0.0).sum(dim=-1)


@dataclass
class _Beam:
    """Live prefixes of one utterance.

    prefixes: H token tuples; blank, label: (H,) log-probabilities of the prefix's alignments
    that end in blank / in its last label; lm: (H,) summed scorer log-probabilities.
    """

    prefixes: list[tuple[int, ...]]
    blank: np.ndarray
    label: np.ndarray
    lm: np.ndarray

    @classmethod
    def empty(cls) -> _Beam:
        return cls([()], np.zeros(1), np.full(1, NEG_INF), np.zeros(1))

    def last(self) -> np.ndarray:
        """(H,) last token of each prefix, -1 for the empty one."""
        return np.array([p[-1] if p else -1 for p in self.prefixes])


@dataclass(frozen=True)
class _Options:
    beam: int
    blank: int
    scorer: PrefixScorer | None
    scorer_weight: float


def _merge_extensions(beam: _Beam, cands: np.ndarray, ext: np.ndarray, stay: np.ndarray) -> None:
    """Move extensions that equal a live prefix into that prefix's label score (in place).

    cands: (K,); ext: (H, K) log-probs of prefix j + cands[k]; stay: (H,) label-ending
    log-probs of the live prefixes. Distinct (prefix, token) pairs never collide otherwise.
    """
    column = {int(c): k for k, c in enumerate(cands)}
    row = {p: i for i, p in enumerate(beam.prefixes)}
    for i, prefix in enumerate(beam.prefixes):
        if not prefix:
            continue
        j, k = row.get(prefix[:-1]), column.get(prefix[-1])
        if j is not None and k is not None:
            stay[i] = np.logaddexp(stay[i], ext[j, k])
            ext[j, k] = NEG_INF


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best finite scores (at least one), best first."""
    n = max(1, min(n, int(np.isfinite(scores).sum())))
    top = np.argpartition(-scores, n - 1)[:n] if n < scores.size else np.arange(scores.size)
    return top[np.argsort(-scores[top], kind="stable")]


def _step(beam: _Beam, lp: np.ndarray, cands: np.ndarray, opts: _Options) -> _Beam:
    """One frame. lp: (V,) log-probs of the frame; cands: (K,) non-blank tokens to extend by."""
    total = np.logaddexp(beam.blank, beam.label)  # (H,)
    last = beam.last()  # (H,)
    stay_blank = total + lp[opts.blank]  # (H,)
    stay_label = beam.label + np.where(last >= 0, lp[last], NEG_INF)  # (H,) repeat last label
    # a repeated label needs a blank in between: only blank-ending alignments extend by it
    source = np.where(cands[None, :] == last[:, None], beam.blank[:, None], total[:, None])
    ext = source + lp[cands][None, :]  # (H, K)
    ext_lm = np.broadcast_to(beam.lm[:, None], ext.shape)  # (H, K)
    if opts.scorer is not None and cands.size:
        ext_lm = ext_lm + opts.scorer(beam.prefixes, cands)
    _merge_extensions(beam, cands, ext, stay_label)
    stay_score = np.logaddexp(stay_blank, stay_label) + opts.scorer_weight * beam.lm  # (H,)
    ext_score = ext + opts.scorer_weight * ext_lm  # (H, K)
    scores = np.concatenate([stay_score, ext_score.ravel()])  # (H + H*K,): stays, extensions
    top = _top(scores, opts.beam)
    stays, (j, k) = top < total.size, np.divmod(np.maximum(top - total.size, 0), cands.size or 1)
    prefixes = [
        beam.prefixes[i] if stay else beam.prefixes[jj] + (int(cands[kk]),)
        for i, stay, jj, kk in zip(top.tolist(), stays, j.tolist(), k.tolist(), strict=True)
    ]
    i = np.minimum(top, total.size - 1)
    return _Beam(
        prefixes,
        blank=np.where(stays, stay_blank[i], NEG_INF),
        label=np.where(stays, stay_label[i], ext[j, k] if cands.size else NEG_INF),
        lm=np.where(stays, beam.lm[i], ext_lm[j, k] if cands.size else 0.0),
    )


def _candidates(lp: Tensor, blank: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """lp: (T, V) -> the k best non-blank tokens of every frame, ids and log-probs, (T, k)."""
    masked = lp.clone()
    masked[:, blank] = NEG_INF
    values, ids = masked.topk(k, dim=-1)  # (T, k)
    return ids.numpy(), values.numpy()


def _finish(beam: _Beam, opts: _Options, nbest: int) -> list[Hypothesis]:
    ctc = np.logaddexp(beam.blank, beam.label)  # (H,)
    scores = ctc + opts.scorer_weight * beam.lm
    return [
        Hypothesis(
            tokens=list(beam.prefixes[i]),
            score=float(scores[i]),
            ctc_score=float(ctc[i]),
            lm_score=float(beam.lm[i]) if opts.scorer is not None else None,
        )
        for i in _top(scores, nbest).tolist()
    ]


def ctc_prefix_beam_search(
    log_probs: Tensor,
    lengths: Tensor,
    beam: int = 10,
    blank: int = 0,
    token_prune: int | None = None,
    prune_logp: float = -12.0,
    scorer: PrefixScorer | None = None,
    scorer_weight: float = 0.0,
    nbest: int | None = None,
) -> list[list[Hypothesis]]:
    """CTC prefix beam search, with optional shallow fusion of a prefix scorer.

    log_probs: (B, T, V) CTC log-probabilities; lengths: (B,) valid frames. Each frame extends
    the live prefixes by at most ``token_prune`` (default: ``beam``) non-blank tokens, those
    with log-probability >= ``prune_logp``. A prefix's score is its CTC log-probability plus
    ``scorer_weight`` * the sum of ``scorer``'s log-probabilities of its tokens. Returns, per
    utterance, up to ``nbest`` (default: ``beam``) hypotheses, best first.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    opts = _Options(beam, blank, scorer, scorer_weight if scorer is not None else 0.0)
    k = min(token_prune or beam, log_probs.shape[-1] - 1)
    lp_all = log_probs.detach().to("cpu", torch.float64)  # (B, T, V)
    results = []
    for lp, length in zip(lp_all, lengths.tolist(), strict=True):
        lp = lp[:length]  # (T_b, V)
        ids, values = _candidates(lp, blank, k)  # (T_b, k) each
        lp_np, state = lp.numpy(), _Beam.empty()
        for t in range(length):
            state = _step(state, lp_np[t], ids[t][values[t] >= prune_logp], opts)
        results.append(_finish(state, opts, nbest or beam))
    return results
