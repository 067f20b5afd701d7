"""Transducer greedy and modified beam search in NumPy, step for step as
``mamba_asr.decode.transducer``'s (same rules, same order of operations, float32 scores), so
that an exported model decodes to the same tokens as the PyTorch one.

Shape key
    B: streams, N: hypotheses of all streams, J: joiner_dim, V: vocabulary (blank included).

The model is used through ``TransducerGraphs``: ``predictor_state(n)`` (a list of arrays),
``predict(tokens (N, 1), state) -> (proj (N, J), state)``, ``join(enc_proj (N, J), pred_proj
(N, J)) -> logits (N, V)``, ``take(state, idx)``, ``put(state, idx, sub)``, ``blank`` and
``vocab_size`` (``mamba_asr.runtime.onnx.OnnxTransducer`` is one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mamba_asr.decode.hypothesis import expand_hypotheses
from mamba_asr.lm.ngram import NgramLM

__all__ = ["BeamSearch", "GreedySearch", "Result", "TransducerGraphs", "log_softmax", "top_k"]

NEG_INF = float("-inf")
State = list[np.ndarray]


class TransducerGraphs(Protocol):
    blank: int
    vocab_size: int

    def predictor_state(self, n: int) -> State: ...

    def predict(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...

    def join(self, enc_proj: np.ndarray, pred_proj: np.ndarray) -> np.ndarray: ...

    def take(self, state: State, idx: np.ndarray, which: str = "predictor") -> State: ...

    def put(self, state: State, idx: np.ndarray, sub: State, which: str = "predictor") -> State: ...


@dataclass(frozen=True)
class Result:
    """One hypothesis: tokens, score and the encoder frame of each token."""

    tokens: list[int]
    score: float
    frames: list[int] = field(default_factory=list)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, float32."""
    x = x.astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, k) of the k largest values of each row of x (B, M), largest first, equal
    values in index order: ``np.argsort(-x, kind="stable")[:, :k]``, without sorting all M."""
    if 2 * k >= x.shape[1]:
        return np.argsort(-x, axis=-1, kind="stable")[:, :k]
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for b, row in enumerate(-x):
        edge = row[np.argpartition(row, k - 1)[:k]].max()  # the k-th best value
        cand = np.flatnonzero(row <= edge)  # (>= k,) in index order, every tie at the edge
        out[b] = cand[np.argsort(row[cand], kind="stable")[:k]]
    return out


def _start(model: TransducerGraphs, batch: int) -> tuple[np.ndarray, State]:
    state = model.predictor_state(batch)
    return model.predict(np.full((batch, 1), model.blank, dtype=np.int64), state)


class GreedySearch:
    """Batched greedy search, resumable frame by frame (``decode.transducer.GreedySearch``)."""

    def __init__(self, model: TransducerGraphs, batch: int, max_symbols_per_frame: int = 4) -> None:
        self.model, self.blank, self.max_symbols = model, model.blank, max_symbols_per_frame
        self.pred, self.pstate = _start(model, batch)  # (B, J), state
        self.scores = np.zeros(batch, np.float32)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.frame = 0

    def advance(self, enc_proj: np.ndarray, active: np.ndarray) -> None:
        """One frame: enc_proj (B, J); active (B,) bool."""
        if enc_proj.shape[0] == 1:
            self._advance_one(enc_proj, bool(active[0]))
            return
        for _ in range(self.max_symbols):
            logp = log_softmax(self.model.join(enc_proj, self.pred))  # (B, V)
            best = logp.argmax(-1)  # (B,)
            best_logp = logp[np.arange(logp.shape[0]), best]
            self.scores += np.where(active, best_logp, np.float32(0.0))
            active = active & (best != self.blank)
            idx = np.nonzero(active)[0]  # (K,)
            if idx.size == 0:
                break
            emitted = best[idx]
            for i, token in zip(idx.tolist(), emitted.tolist(), strict=True):
                self.tokens[i].append(token)
                self.frames[i].append(self.frame)
            out, sub = self.model.predict(
                emitted[:, None].astype(np.int64), self.model.take(self.pstate, idx)
            )
            self.pred = self.pred.copy()
            self.pred[idx] = out
            self.pstate = self.model.put(self.pstate, idx, sub)
        self.frame += 1

    def _advance_one(self, enc_proj: np.ndarray, active: bool) -> None:
        """``advance`` for one stream, with the same float32 operations and Python scalars
        for the rest (a frame without a token costs the joiner and little else)."""
        for _ in range(self.max_symbols):
            logp = log_softmax(self.model.join(enc_proj, self.pred))[0]  # (V,)
            best = int(logp.argmax())
            if active:
                self.scores += logp[best]
            active = active and best != self.blank
            if not active:
                break
            self.tokens[0].append(best)
            self.frames[0].append(self.frame)
            self.pred, self.pstate = self.model.predict(
                np.array([[best]], dtype=np.int64), self.pstate
            )
        self.frame += 1

    def nbest(self) -> list[list[Result]]:
        return [
            [Result(list(t), float(s), list(f))]
            for t, f, s in zip(self.tokens, self.frames, self.scores.tolist(), strict=True)
        ]

    def last_token_frame(self) -> int | None:
        """The frame of the best hypothesis's last token (stream 0)."""
        return self.frames[0][-1] if self.frames[0] else None


class BeamSearch:
    """Batched modified beam search with LM fusion (``decode.transducer.BeamSearch``)."""

    def __init__(
        self,
        model: TransducerGraphs,
        batch: int,
        beam: int = 4,
        max_symbols_per_frame: int = 4,
        *,
        lm: NgramLM | None = None,
        lm_weight: float = 0.0,
        length_bonus: float = 0.0,
    ) -> None:
        if lm is not None and lm.vocab_size != model.vocab_size:
            raise ValueError(
                f"the LM has {lm.vocab_size} ids, the model {model.vocab_size}: an LM "
                f"must be trained with the model's tokenizer"
            )
        self.lm, self.lm_weight, self.length_bonus = lm, lm_weight, length_bonus
        self.model, self.blank, self.beam, self.batch = model, model.blank, beam, batch
        self.max_symbols = max_symbols_per_frame
        self.pred, self.pstate = _start(model, batch)  # (N, J)
        self.utt = np.arange(batch)  # (N,)
        self.scores = np.zeros(batch, np.float32)
        self.tokens: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frames: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frame = 0

    def _top(self, enc_proj: np.ndarray, frozen: np.ndarray) -> tuple[Any, Any, Any]:
        logp = log_softmax(self.model.join(enc_proj[self.utt], self.pred))  # (N, V)
        if self.lm is not None and self.lm_weight > 0:
            rows = np.stack([self.lm.log_probs(h) for h in self.tokens]).astype(np.float32)
            fused = (self.lm_weight * rows).astype(np.float32)
            fused[:, self.blank] = 0.0
            logp = logp + fused
        if self.length_bonus:
            logp = logp + np.float32(self.length_bonus)
            logp[:, self.blank] -= np.float32(self.length_bonus)
        if frozen.any():
            logp[frozen] = NEG_INF
            logp[frozen, self.blank] = 0.0
        cand = self.scores[:, None] + logp  # (N, V)
        vocab = cand.shape[1]
        counts = np.bincount(self.utt, minlength=self.batch)  # (B,)
        starts = np.cumsum(counts) - counts
        pos = np.arange(self.utt.size) - starts[self.utt]
        width = int(counts.max())
        padded = np.full((self.batch, width, vocab), NEG_INF, np.float32)
        padded[self.utt, pos] = cand
        flat = padded.reshape(self.batch, -1)
        idx = top_k(flat, min(self.beam, width * vocab))  # (B, K) best first
        top = np.take_along_axis(flat, idx, axis=-1)
        return top, starts[:, None] + idx // vocab, idx % vocab

    def advance(self, enc_proj: np.ndarray, active: np.ndarray) -> None:
        """One frame: enc_proj (B, J); active (B,) bool."""
        is_open = [True] * len(self.tokens)
        for round_ in range(self.max_symbols):
            last = round_ == self.max_symbols - 1
            frozen = ~(active[self.utt] & np.array(is_open, dtype=bool))
            top, parent, token = (x.tolist() for x in self._top(enc_proj, frozen))
            e = expand_hypotheses(
                top, parent, token, self.tokens, self.frames, self.frame, self.blank, last
            )
            self._update(e.parents, e.emits)
            self.scores = np.array(e.scores, dtype=np.float32)
            self.utt = np.array(e.utts, dtype=np.int64)
            self.tokens, self.frames, is_open = e.tokens, e.frames, e.opens
            if not any(is_open):
                break
        self.frame += 1

    def _update(self, parents: list[int], emits: list[int]) -> None:
        parent = np.array(parents, dtype=np.int64)
        emit = np.array(emits, dtype=np.int64)
        self.pred = self.pred[parent]
        self.pstate = self.model.take(self.pstate, parent)
        idx = np.nonzero(emit >= 0)[0]
        if idx.size == 0:
            return
        out, sub = self.model.predict(emit[idx, None], self.model.take(self.pstate, idx))
        self.pred[idx] = out
        self.pstate = self.model.put(self.pstate, idx, sub)

    def nbest(self) -> list[list[Result]]:
        out: list[list[Result]] = [[] for _ in range(self.batch)]
        for b, t, f, s in zip(
            self.utt.tolist(), self.tokens, self.frames, self.scores.tolist(), strict=True
        ):
            out[b].append(Result(list(t), s, list(f)))
        return [sorted(hyps, key=lambda h: h.score, reverse=True) for hyps in out]

    def last_token_frame(self) -> int | None:
        """The frame of the best hypothesis's last token (stream 0)."""
        frames = self.frames[int(self.scores.argmax())]
        return frames[-1] if frames else None
