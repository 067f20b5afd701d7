"""The token n-gram LM (``mamba_asr.lm``) against a plain dictionary-based interpolated
Kneser-Ney reference on fresh random corpora; normalisation, files and errors."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from mamba_asr.lm import NgramLM, load_ngram

BOS, EOS = 1, 2


def random_corpus(rng: np.random.Generator, vocab: int, sentences: int) -> list[list[int]]:
    """Sentences of ids 3..vocab-1 from a random bigram chain, so contexts repeat."""
    follow = rng.integers(3, vocab, size=(vocab, 3))
    out = []
    for _ in range(sentences):
        ids = [int(rng.integers(3, vocab))]
        for _ in range(int(rng.integers(0, 9))):
            ids.append(int(follow[ids[-1], rng.integers(3)]) if rng.random() < 0.8
                       else int(rng.integers(3, vocab)))  # fmt: skip
        out.append(ids)
    return out


class ReferenceKN:
    """Interpolated Kneser-Ney written out with Counters, one probability at a time."""

    def __init__(
        self,
        sentences: list[list[int]],
        vocab: int,
        order: int,
        discount: float,
        min_count: int = 1,
        from_order: int = 3,
    ):
        self.vocab, self.order, self.d = vocab, order, discount
        grams: Counter[tuple[int, ...]] = Counter()
        for ids in sentences:
            seq = [BOS] * (order - 1) + ids + [EOS]
            for n in range(1, order + 1):
                for i in range(len(seq) - n + 1):
                    g = tuple(seq[i : i + n])
                    if g[-1] != BOS and EOS not in g[:-1]:
                        grams[g] += 1
        self.count: dict[int, Counter[tuple[int, ...]]] = defaultdict(Counter)
        for g, c in grams.items():
            if len(g) == order:
                self.count[order][g] = c
        for g in grams:  # continuation counts of the lower orders: distinct left neighbours
            if len(g) > 1:
                self.count[len(g) - 1][g[1:]] += 1
        for n in range(from_order, order + 1):  # pruning: the rare n-grams of higher orders go
            self.count[n] = Counter({g: c for g, c in self.count[n].items() if c >= min_count})

    def prob(self, h: tuple[int, ...], w: int) -> float:
        n = len(h) + 1
        if n == 1:
            total = sum(self.count[1].values()) + 0.01 * self.vocab
            return (self.count[1][(w,)] + 0.01) / total
        followers = {g[-1]: c for g, c in self.count[n].items() if g[:-1] == h}
        lower = self.prob(h[1:], w)
        if not followers:
            return lower
        total = sum(followers.values())
        return (
            max(followers.get(w, 0) - self.d, 0) / total + self.d * len(followers) / total * lower
        )


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_the_reference_and_sums_to_one(order: int) -> None:
    rng = np.random.default_rng()
    vocab = 9
    corpus = random_corpus(rng, vocab, 60)
    lm = NgramLM.train(corpus, vocab, order, discount=0.7)
    ref = ReferenceKN(corpus, vocab, order, 0.7)
    histories = [[], *[s[: int(rng.integers(0, len(s) + 1))] for s in corpus[:15]]]
    histories.append([int(x) for x in rng.integers(3, vocab, size=5)])  # likely unseen
    for hist in histories:
        got = np.exp(lm.log_probs(hist))
        assert got.sum() == pytest.approx(1.0, abs=1e-9)
        h = tuple(([BOS] * (order - 1) + hist)[-(order - 1) :]) if order > 1 else ()
        want = np.array([ref.prob(h, w) for w in range(vocab)])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("order", "min_count", "from_order"), [(3, 2, 3), (4, 2, 2), (4, 3, 3)])
def test_pruned_matches_the_pruned_reference(order: int, min_count: int, from_order: int) -> None:
    rng = np.random.default_rng()
    vocab = 8
    corpus = random_corpus(rng, vocab, 80)
    full = NgramLM.train(corpus, vocab, order, discount=0.6)
    lm = full.prune(min_count, from_order)
    ref = ReferenceKN(corpus, vocab, order, 0.6, min_count, from_order)
    assert sum(map(len, lm.keys)) < sum(map(len, full.keys))  # something was dropped
    for n in range(1, from_order):
        np.testing.assert_array_equal(lm.keys[n - 1], full.keys[n - 1])
    histories = [[], *[s[: int(rng.integers(0, len(s) + 1))] for s in corpus[:15]]]
    for hist in histories:
        got = np.exp(lm.log_probs(hist))
        assert got.sum() == pytest.approx(1.0, abs=1e-9)
        h = tuple(([BOS] * (order - 1) + hist)[-(order - 1) :])
        want = np.array([ref.prob(h, w) for w in range(vocab)])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    for hist in histories:  # min_count 1 drops nothing
        np.testing.assert_array_equal(full.prune(1).log_probs(hist), full.log_probs(hist))
    with pytest.raises(ValueError, match="min_count"):
        full.prune(0)


def test_perplexity_and_sentence_log_prob() -> None:
    rng = np.random.default_rng()
    corpus = random_corpus(rng, 8, 80)
    lm = NgramLM.train(corpus, 8, 3)
    ids = corpus[0]
    manual = sum(lm.log_probs(ids[:i])[w] for i, w in enumerate([*ids, EOS]))
    assert lm.sentence_log_prob(ids) == pytest.approx(manual)
    ppl = lm.perplexity(corpus[:10])
    total = sum(lm.sentence_log_prob(s) for s in corpus[:10])
    assert ppl == pytest.approx(math.exp(-total / sum(len(s) + 1 for s in corpus[:10])))
    # a higher order fits its own training text better
    assert NgramLM.train(corpus, 8, 1).perplexity(corpus) > ppl


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng()
    corpus = random_corpus(rng, 10, 40)
    lm = NgramLM.train(corpus, 10, 4, fingerprint="abc")
    path = lm.save(tmp_path / "lm.npz")
    back = load_ngram(path)
    assert (back.order, back.vocab_size, back.fingerprint, back.discount) == (4, 10, "abc", 0.75)
    for hist in ([], corpus[0][:2], corpus[1]):
        np.testing.assert_array_equal(back.log_probs(hist), lm.log_probs(hist))


def test_bad_input_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such LM file"):
        load_ngram(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="junk.npz: not an n-gram LM file"):
        load_ngram(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 5\)"):
        NgramLM.train([[3, 7]], 5, 2)
    with pytest.raises(ValueError, match="no sentences"):
        NgramLM.train([], 5, 2)
    with pytest.raises(ValueError, match="does not fit 64-bit keys"):
        NgramLM.train([[3]], 5000, 6)


def test_fingerprint_tells_tokenizers_apart(tmp_path) -> None:
    from mamba_asr.lm import tokenizer_fingerprint
    from mamba_asr.text.tokenizer import CharTokenizer, train_sentencepiece

    texts = ["THE CAT SAT ON THE MAT", "A DOG RAN TO THE PARK", "THE BIRD SANG"] * 20
    spm = train_sentencepiece(texts, tmp_path / "spm", 24, model_type="unigram")
    char = CharTokenizer()
    assert tokenizer_fingerprint(spm, 24) == tokenizer_fingerprint(spm, 24)
    assert tokenizer_fingerprint(char, 24) != tokenizer_fingerprint(spm, 24)
    assert tokenizer_fingerprint(char, 31) != tokenizer_fingerprint(CharTokenizer("AB '"), 31)
