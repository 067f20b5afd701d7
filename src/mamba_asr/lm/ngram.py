"""Token n-gram language model (interpolated Kneser-Ney) for shallow fusion in beam search.

Shape key
    V: the tokenizer's vocabulary (ids 0-2: blank, bos, eos), N: hypotheses, n: an n-gram order.

The model counts n-grams of a tokenizer's ids over sentences padded with ``order - 1`` bos ids
in front and one eos at the end. An n-gram (h, w) is stored as the integer key
h_1 V^(n-1) + ... + w, so all n-grams of one history h form one contiguous run of the sorted
keys of order n, found with two binary searches. Smoothing is interpolated Kneser-Ney with one
discount D (Chen & Goodman 1998): the highest order uses counts, the lower orders use
continuation counts N1+(. h w) (how many distinct tokens precede h w), and

    P(w | h) = max(c(h w) - D, 0) / c(h) + D N1+(h .) / c(h) P(w | h')

with h' the history without its oldest token; the lowest order is continuation counts over V
with a small floor so that every id gets some probability. ``log_probs(history)`` returns the
whole (V,) distribution of one history (cached), which is what beam search needs for every
extension of a hypothesis at once.

Files are NumPy ``.npz`` archives: order, vocabulary size, discount, the tokenizer's fingerprint
(``tokenizer_fingerprint``; a mismatch with the model's tokenizer is an error) and per order
the sorted keys and counts.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only for batch_log_probs: the model scores without it
    import torch
    from torch import Tensor

__all__ = ["NgramLM", "load_ngram", "tokenizer_fingerprint"]

BOS_ID, EOS_ID = 1, 2
FLOOR = 0.01  # pseudo-count of every id in the lowest order
FORMAT = 1
CACHE_BYTES = 64 * 2**20  # distributions of recent histories kept


def tokenizer_fingerprint(tokenizer: object, vocab_size: int) -> str:
    """A short hash of the tokenizer's pieces in id order (SentencePiece pieces, word-start
    marks included; for other tokenizers what each id decodes to)."""
    piece = getattr(tokenizer, "id_to_piece", None)
    if piece is None:
        decode = tokenizer.decode  # type: ignore[attr-defined]
        piece = lambda i: decode([i])  # noqa: E731
    pieces = [piece(i) if i > 2 else f"<{i}>" for i in range(vocab_size)]
    return hashlib.sha1("\x00".join(pieces).encode()).hexdigest()[:16]


class NgramLM:
    """An n-gram model over token ids: ``train``, ``save``/``load``, ``log_probs(history)``.

    keys[n - 1], counts[n - 1]: sorted int64 keys of the n-grams of order n and their (for the
    highest order) counts or (below it) continuation counts.
    """

    def __init__(
        self,
        order: int,
        vocab_size: int,
        keys: Sequence[np.ndarray],
        counts: Sequence[np.ndarray],
        discount: float = 0.75,
        fingerprint: str = "",
    ) -> None:
        if order < 1 or len(keys) != order or len(counts) != order:
            raise ValueError(f"an order-{order} model needs {order} key and count arrays")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.order, self.vocab_size, self.discount = order, vocab_size, discount
        self.keys, self.counts = list(keys), list(counts)
        self.fingerprint = fingerprint
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self._cache_size = max(256, CACHE_BYTES // (8 * vocab_size))  # (V,) float64 rows

    # --- training ----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        sentences: Iterable[Sequence[int]],
        vocab_size: int,
        order: int = 5,
        discount: float = 0.75,
        fingerprint: str = "",
    ) -> NgramLM:
        """Count the n-grams of ``sentences`` (token ids, no bos/eos) up to ``order``."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if vocab_size**order >= 2**63:
            raise ValueError(f"vocab_size {vocab_size} ** order {order} does not fit 64-bit keys")
        stream: list[int] = []
        for ids in sentences:
            stream += [BOS_ID] * (order - 1) + list(ids) + [EOS_ID]
        if not stream:
            raise ValueError("no sentences to train on")
        arr = np.asarray(stream, dtype=np.int64)
        if arr.min() < 0 or arr.max() >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size})")
        keys, counts = [], []
        for n in range(1, order + 1):
            width = len(arr) - n + 1
            key = np.zeros(width, dtype=np.int64)
            keep = arr[n - 1 :] != BOS_ID  # bos is never predicted
            for j in range(n):
                key = key * vocab_size + arr[j : j + width]
                if j < n - 1:
                    keep &= arr[j : j + width] != EOS_ID  # no n-gram runs past a sentence end
            k, c = np.unique(key[keep], return_counts=True)
            keys.append(k)
            counts.append(c)
        for n in range(1, order):  # continuation counts: distinct left neighbours of each n-gram
            keys[n - 1], counts[n - 1] = np.unique(keys[n] % vocab_size**n, return_counts=True)
        return cls(order, vocab_size, keys, counts, discount, fingerprint)

    def prune(self, min_count: int, from_order: int = 3) -> NgramLM:
        """A copy without the n-grams of order >= ``from_order`` whose stored count (a count at
        the highest order, a continuation count below it) is under ``min_count``.

        Orders below ``from_order`` stay whole, so every id keeps its unigram and bigram
        probabilities. Each history's run of n-grams shrinks to those kept; as every kept count
        is >= 1 > discount, ``P(. | h)`` still sums to one, with the mass of the dropped
        n-grams going to the lower order through the smaller c(h). Shrinks a 5-gram of a few
        hundred thousand sentences four times at ``min_count`` 2, seven times at 3.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if from_order < 2:
            raise ValueError(f"from_order must be >= 2, got {from_order}")
        keys, counts = list(self.keys), list(self.counts)
        for n in range(from_order, self.order + 1):
            keep = counts[n - 1] >= min_count
            keys[n - 1], counts[n - 1] = keys[n - 1][keep], counts[n - 1][keep]
        return NgramLM(self.order, self.vocab_size, keys, counts, self.discount, self.fingerprint)

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        arrays = {f"keys{n}": k for n, k in enumerate(self.keys, 1)}
        arrays |= {f"counts{n}": c.astype(np.int32) for n, c in enumerate(self.counts, 1)}
        meta = np.array([FORMAT, self.order, self.vocab_size], dtype=np.int64)
        with path.open("wb") as f:
            np.savez_compressed(f, meta=meta, discount=np.float64(self.discount),
                                fingerprint=np.str_(self.fingerprint), **arrays)  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NgramLM:
        """Read a file of ``save``; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt, order, vocab = (int(x) for x in z["meta"])
                if fmt != FORMAT:
                    raise ValueError(f"format {fmt}, expected {FORMAT}")
                keys = [z[f"keys{n}"] for n in range(1, order + 1)]
                counts = [z[f"counts{n}"].astype(np.int64) for n in range(1, order + 1)]
                return cls(order, vocab, keys, counts, float(z["discount"]), str(z["fingerprint"]))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such LM file") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not an n-gram LM file of mamba-asr ({e})") from None

    # --- probabilities -----------------------------------------------------------------------

    def _history(self, history: Sequence[int]) -> tuple[int, ...]:
        """The last order - 1 ids of bos-padded ``history`` (ids emitted so far)."""
        if self.order == 1:
            return ()
        padded = [BOS_ID] * (self.order - 1) + list(history)
        return tuple(padded[-(self.order - 1) :])

    def _probs(self, h: tuple[int, ...]) -> np.ndarray:
        """P(. | h) as float64 (V,), h of any length up to order - 1."""
        hit = self._cache.get(h)
        if hit is not None:
            return hit
        vocab = self.vocab_size
        if not h:
            p = np.full(vocab, FLOOR)
            np.add.at(p, self.keys[0], self.counts[0].astype(np.float64))
            p /= p.sum()
        else:
            lower = self._probs(h[1:])
            base = 0
            for t in h:
                base = base * vocab + t
            keys, counts = self.keys[len(h)], self.counts[len(h)]
            lo, hi = np.searchsorted(keys, [base * vocab, (base + 1) * vocab])
            if lo == hi:  # history never seen: all mass to the lower order
                p = lower
            else:
                c = counts[lo:hi].astype(np.float64)
                total = c.sum()
                p = lower * (self.discount * (hi - lo) / total)
                p[keys[lo:hi] - base * vocab] += np.maximum(c - self.discount, 0.0) / total
        if len(self._cache) >= self._cache_size:  # a bound on memory, whatever V is
            self._cache.clear()
        self._cache[h] = p
        return p

    def log_probs(self, history: Sequence[int]) -> np.ndarray:
        """log P(w | history) for every id w: (V,) float64; history: the ids so far (no bos)."""
        return np.log(np.maximum(self._probs(self._history(history)), 1e-30))

    def batch_log_probs(self, histories: Sequence[Sequence[int]], device: torch.device) -> Tensor:
        """(N, V) float32 log-probabilities of the next id after each history."""
        import torch

        rows = np.stack([self.log_probs(h) for h in histories])
        return torch.from_numpy(rows).float().to(device)

    def sentence_log_prob(self, ids: Sequence[int]) -> float:
        """log P(ids, eos): the whole sentence with its end."""
        ids = list(ids)
        return float(sum(self.log_probs(ids[:i])[w] for i, w in enumerate([*ids, EOS_ID])))

    def perplexity(self, sentences: Iterable[Sequence[int]]) -> float:
        """Per-token perplexity (eos counted) of ``sentences``."""
        total, count = 0.0, 0
        for ids in sentences:
            total += self.sentence_log_prob(ids)
            count += len(ids) + 1
        if count == 0:
            raise ValueError("no sentences to score")
        return float(np.exp(-total / count))


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> NgramLM:
    return NgramLM.load(path)


def load_ngram(path: str | os.PathLike[str]) -> NgramLM:
    """``NgramLM.load`` with a cache (one load per file and modification time)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such LM file")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)
