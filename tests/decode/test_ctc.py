"""CTC greedy and prefix beam search against brute force over all alignments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from mamba_asr.decode.ctc import best_path_score, ctc_greedy, ctc_prefix_beam_search

BLANK = 0


def collapse(path: tuple[int, ...], blank: int = BLANK) -> tuple[int, ...]:
    out = [c for i, c in enumerate(path) if c != blank and (i == 0 or path[i - 1] != c)]
    return tuple(out)


def brute_force(log_probs: Tensor) -> dict[tuple[int, ...], float]:
    """log_probs: (T, V) -> log P(label sequence) for every sequence, by enumerating alignments."""
    frames, vocab = log_probs.shape
    lp = log_probs.double().numpy()
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        score = float(sum(lp[t, c] for t, c in enumerate(path)))
        key = collapse(path)
        totals[key] = float(np.logaddexp(totals.get(key, -math.inf), score))
    return totals


def random_log_probs(batch: int, frames: int, vocab: int, sharpness: float = 1.0) -> Tensor:
    return (torch.randn(batch, frames, vocab) * sharpness).log_softmax(dim=-1)


def test_greedy_by_hand() -> None:
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [0, 3, 3, 3, 0, 2, 1, 1]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().add(1e-3).log()  # (2, 8, 4)
    lengths = torch.tensor([8, 6])  # the second utterance stops before "1 1"
    assert ctc_greedy(log_probs, lengths) == [[1, 1, 2], [3, 2]]
    assert ctc_greedy(log_probs, torch.tensor([0, 1])) == [[], []]
    assert ctc_greedy(log_probs, lengths, blank=3) == [[1, 0, 1, 2, 0], [0, 0, 2]]


def test_best_path_score_ignores_padding() -> None:
    log_probs = random_log_probs(2, 6, 5)
    lengths = torch.tensor([6, 4])
    want = torch.stack([log_probs[0].max(-1).values.sum(), log_probs[1, :4].max(-1).values.sum()])
    torch.testing.assert_close(best_path_score(log_probs, lengths), want)


@pytest.mark.parametrize("frames, vocab", [(1, 2), (3, 3), (4, 3), (5, 3), (5, 2)])
def test_exhaustive_beam_equals_brute_force(frames: int, vocab: int) -> None:
    """With no pruning and room for every prefix, the n-best list is exact."""
    for _ in range(5):
        log_probs = random_log_probs(1, frames, vocab, sharpness=2.0)
        truth = brute_force(log_probs[0])
        hyps = ctc_prefix_beam_search(
            log_probs, torch.tensor([frames]), beam=len(truth), token_prune=vocab,
            prune_logp=-math.inf,
        )[0]  # fmt: skip
        assert len(hyps) == len(truth)
        for hyp in hyps:
            assert hyp.score == pytest.approx(truth[tuple(hyp.tokens)], abs=1e-9)
            assert hyp.ctc_score == hyp.score and hyp.lm_score is None
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_default_beam_finds_brute_force_best() -> None:
    for _ in range(50):
        frames, vocab = int(torch.randint(1, 6, ())), int(torch.randint(2, 4, ()))
        log_probs = random_log_probs(1, frames, vocab, sharpness=2.0)
        truth = brute_force(log_probs[0])
        best = max(truth, key=truth.__getitem__)
        hyp = ctc_prefix_beam_search(log_probs, torch.tensor([frames]))[0][0]
        assert tuple(hyp.tokens) == best
        assert hyp.score == pytest.approx(truth[best], abs=1e-9)


def test_batch_respects_lengths() -> None:
    log_probs = random_log_probs(3, 5, 3, sharpness=2.0)
    lengths = torch.tensor([5, 3, 1])
    batched = ctc_prefix_beam_search(log_probs, lengths, beam=4)
    for b, length in enumerate(lengths.tolist()):
        alone = ctc_prefix_beam_search(log_probs[b : b + 1, :length], lengths[b : b + 1], beam=4)
        assert batched[b] == alone[0]
        truth = brute_force(log_probs[b, :length])
        assert tuple(batched[b][0].tokens) == max(truth, key=truth.__getitem__)


def test_empty_utterance() -> None:
    hyps = ctc_prefix_beam_search(random_log_probs(1, 3, 4), torch.tensor([0]))
    assert [(h.tokens, h.score) for h in hyps[0]] == [([], 0.0)]


@pytest.mark.parametrize("vocab", [5, 31])
def test_beam_one_matches_greedy_on_peaked_distributions(vocab: int) -> None:
    log_probs = random_log_probs(4, 60, vocab, sharpness=8.0)
    lengths = torch.tensor([60, 41, 17, 60])
    hyps = ctc_prefix_beam_search(log_probs, lengths, beam=1)
    assert [h[0].tokens for h in hyps] == ctc_greedy(log_probs, lengths)
    assert all(h[0].tokens for h in hyps)  # not trivially empty


def test_scorer_fusion_equals_brute_force() -> None:
    """score(y) = log P_ctc(y) + w * sum_i lm(y_<i, y_i), exact when nothing is pruned."""
    frames, vocab, weight = 4, 3, 0.7
    table = torch.randn(vocab, vocab).log_softmax(-1).double().numpy()  # bigram: prev -> next

    def bigram(prefixes, tokens):
        prev = np.array([p[-1] if p else 0 for p in prefixes])  # start context: row 0
        return table[prev][:, tokens]  # (H, K)

    def lm(seq: tuple[int, ...]) -> float:
        return float(sum(table[([0, *seq])[i], c] for i, c in enumerate(seq)))

    log_probs = random_log_probs(1, frames, vocab, sharpness=2.0)
    truth = brute_force(log_probs[0])
    hyps = ctc_prefix_beam_search(
        log_probs, torch.tensor([frames]), beam=len(truth), token_prune=vocab,
        prune_logp=-math.inf, scorer=bigram, scorer_weight=weight,
    )[0]  # fmt: skip
    assert len(hyps) == len(truth)
    for hyp in hyps:
        seq = tuple(hyp.tokens)
        assert hyp.ctc_score == pytest.approx(truth[seq], abs=1e-9)
        assert hyp.lm_score == pytest.approx(lm(seq), abs=1e-9)
        assert hyp.score == pytest.approx(truth[seq] + weight * lm(seq), abs=1e-9)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_pruning_threshold_limits_candidates() -> None:
    """A token below prune_logp on every frame never appears."""
    log_probs = random_log_probs(1, 8, 4)
    log_probs[..., 3] = -20.0
    hyps = ctc_prefix_beam_search(log_probs.log_softmax(-1), torch.tensor([8]), beam=8)[0]
    assert all(3 not in h.tokens for h in hyps)
    assert len({tuple(h.tokens) for h in hyps}) == len(hyps)  # prefixes are merged, not repeated
