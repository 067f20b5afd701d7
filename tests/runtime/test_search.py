"""The NumPy searches: top-k is what a stable sort of the whole row gives, ties included; the
greedy search of one stream (scalars) gives what the batched one gives each stream."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_asr.runtime.search import GreedySearch, top_k


@pytest.mark.parametrize("k", [1, 4, 10, 40])
def test_top_k_equals_a_stable_sort(k):
    rng = np.random.default_rng(k)
    x = rng.integers(-5, 5, size=(3, 64)).astype(np.float32)  # many ties
    x[1, 10:] = -np.inf  # a row with fewer finite values than k
    x[2] = rng.standard_normal(64)
    expected = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k(x, k), expected)


class RandomGraphs:
    """A joiner and a predictor of random NumPy weights, with the runtime's interface."""

    blank, vocab_size = 0, 6

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((self.vocab_size, 8)).astype(np.float32)
        self.out = rng.standard_normal((8, self.vocab_size)).astype(np.float32)

    def predictor_state(self, n: int) -> list[np.ndarray]:
        return [np.zeros((n, 1), np.int64)]

    def predict(self, tokens, state):
        prev = state[0][:, 0]
        return self.embed[tokens[:, 0]] + 0.5 * self.embed[prev], [tokens.astype(np.int64)]

    def join(self, enc_proj, pred_proj):  # row by row: the same numbers for any batch
        rows = zip(enc_proj, pred_proj, strict=True)
        return np.stack([np.tanh(e + p) @ self.out for e, p in rows])

    def take(self, state, idx, which="predictor"):
        return [x[idx] for x in state]

    def put(self, state, idx, sub, which="predictor"):
        out = [x.copy() for x in state]
        for x, y in zip(out, sub, strict=True):
            x[idx] = y
        return out


@pytest.mark.parametrize("seed", range(4))
def test_greedy_search_of_one_stream_equals_the_batched_search(seed):
    model = RandomGraphs(seed)
    frames = np.random.default_rng(seed).standard_normal((40, 8)).astype(np.float32) * 2
    one, two = GreedySearch(model, 1), GreedySearch(model, 2)
    for t, frame in enumerate(frames):
        active = t % 7 != 3  # a frame now and then where the stream is not active
        one.advance(frame[None], np.array([active]))
        two.advance(np.stack([frame, frame]), np.array([active, active]))
    assert one.tokens[0] and one.tokens[0] == two.tokens[0] == two.tokens[1]
    assert one.frames[0] == two.frames[0]
    assert one.scores.dtype == np.float32 and one.scores[0] == two.scores[0]
    assert one.pred.shape == (1, 8)
