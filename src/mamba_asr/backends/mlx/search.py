"""Transducer searches in MLX: batched greedy search and modified beam search with n-gram LM
fusion, resumable frame by frame.

Shape key
    B: utterances (or streams), T: encoder frames, J: joiner_dim, V: vocabulary, N: hypotheses.

The same algorithms as ``mamba_asr.decode.transducer`` (``GreedySearch``, ``BeamSearch``: up to
``max_symbols_per_frame`` tokens per frame, hypotheses in the same state merged by log-add,
LM fusion on tokens only), with the same attributes (``frame``, ``frames``, ``scores``,
``nbest()``), so ``mamba_asr.streaming.Stream`` drives either. The network runs in MLX (joiner,
predictor); the bookkeeping of hypotheses (top-k, merging) runs in NumPy on the (N, V)
log-probabilities of a frame, as PyTorch's search does in Python on its top-k.
"""

from __future__ import annotations

from typing import Any, Protocol

import mlx.core as mx
import numpy as np

from mamba_asr.decode.hypothesis import expand_hypotheses
from mamba_asr.decode.transducer import TransducerHypothesis

__all__ = ["BeamSearch", "GreedySearch", "make_search"]

NEG_INF = float("-inf")


class TokenLM(Protocol):
    """What fusion needs of an LM (``mamba_asr.lm.NgramLM``)."""

    vocab_size: int

    def log_probs(self, history: Any) -> np.ndarray: ...


def log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def _start(model: Any, batch: int) -> tuple[mx.array, np.ndarray]:
    """Predictor output for the blank start token: (pred_proj (B, J), pstate (B, K-1))."""
    pstate = model.predictor.init_state(batch)
    out, pstate = model.predictor(np.full((batch, 1), model.blank, dtype=np.int64), pstate)
    return model.joiner.project_predictor(out[:, 0]), pstate


class _FrameSearch:
    frame: int

    def advance(self, enc_proj: mx.array, active: Any) -> None:
        raise NotImplementedError

    def advance_frames(self, enc_proj: mx.array, lengths: Any = None) -> None:
        """Consume enc_proj (B, T, J); lengths (B,) valid frames (None: all T)."""
        batch, frames, _ = enc_proj.shape
        lengths = np.full(batch, frames) if lengths is None else np.asarray(lengths)
        for t in range(frames):
            self.advance(enc_proj[:, t], lengths > t)


class GreedySearch(_FrameSearch):
    """Batched greedy search (``mamba_asr.decode.transducer.GreedySearch`` in MLX)."""

    def __init__(self, model: Any, batch: int, max_symbols_per_frame: int = 4) -> None:
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame!r}")
        self.model, self.blank, self.max_symbols = model, model.blank, max_symbols_per_frame
        self.pred, self.pstate = _start(model, batch)  # (B, J), (B, K-1)
        self.scores = np.zeros(batch, dtype=np.float32)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.frame = 0

    def advance(self, enc_proj: mx.array, active: Any) -> None:
        """One frame: enc_proj (B, J); active (B,) bool, the utterances that have this frame."""
        active = np.asarray(active, dtype=bool).copy()
        for _ in range(self.max_symbols):
            logp = log_softmax(self.model.joiner.join(enc_proj, self.pred))  # (B, V)
            best = mx.argmax(logp, axis=-1)  # (B,)
            best_logp = mx.take_along_axis(logp, best[:, None], axis=-1)[:, 0]
            best, best_logp = np.array(best), np.array(best_logp)
            self.scores += np.where(active, best_logp, np.float32(0.0))
            active &= best != self.blank
            idx = np.flatnonzero(active)  # (K,)
            if idx.size == 0:
                break
            for i in idx.tolist():
                self.tokens[i].append(int(best[i]))
                self.frames[i].append(self.frame)
            out, sub = self.model.predictor(best[idx, None], self.pstate[idx])
            self.pred[mx.array(idx)] = self.model.joiner.project_predictor(out[:, 0])
            self.pstate[idx] = sub
        self.frame += 1

    def hypotheses(self) -> list[TransducerHypothesis]:
        return [
            TransducerHypothesis(list(t), float(s), frames=list(f))
            for t, f, s in zip(self.tokens, self.frames, self.scores.tolist(), strict=True)
        ]

    def nbest(self) -> list[list[TransducerHypothesis]]:
        return [[h] for h in self.hypotheses()]


class BeamSearch(_FrameSearch):
    """Modified beam search with up to ``max_symbols_per_frame`` tokens per frame and shallow
    fusion (``mamba_asr.decode.transducer.BeamSearch`` in MLX; the same arguments)."""

    def __init__(
        self,
        model: Any,
        batch: int,
        beam: int = 4,
        max_symbols_per_frame: int = 4,
        *,
        lm: TokenLM | None = None,
        lm_weight: float = 0.0,
        length_bonus: float = 0.0,
    ) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam!r}")
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame!r}")
        if lm_weight < 0 or (lm_weight > 0 and lm is None):
            raise ValueError(f"lm_weight must be >= 0 and needs an lm, got {lm_weight!r}")
        if lm is not None and lm.vocab_size != model.vocab_size:
            raise ValueError(f"the LM has {lm.vocab_size} ids, the model {model.vocab_size}")
        self.lm, self.lm_weight, self.length_bonus = lm, lm_weight, length_bonus
        self.model, self.blank, self.beam, self.batch = model, model.blank, beam, batch
        self.max_symbols = max_symbols_per_frame
        self.pred, self.pstate = _start(model, batch)  # (N, J), (N, K-1)
        self.utt = np.arange(batch)  # (N,) utterance of each hypothesis
        self.scores = np.zeros(batch, dtype=np.float32)  # (N,)
        self.tokens: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frames: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frame = 0

    def _top(self, enc_proj: mx.array, frozen: np.ndarray) -> tuple[list, list, list]:
        """The best extensions per utterance: scores, parents and tokens, B lists of K each."""
        logits = self.model.joiner.join(enc_proj[mx.array(self.utt)], self.pred)
        logp = np.array(log_softmax(logits.astype(mx.float32)))  # (N, V)
        if self.lm is not None and self.lm_weight > 0:
            rows = np.stack([self.lm.log_probs(h) for h in self.tokens]).astype(np.float32)
            fused = np.float32(self.lm_weight) * rows
            fused[:, self.blank] = 0.0
            logp = logp + fused
        if self.length_bonus:
            logp = logp + np.float32(self.length_bonus)
            logp[:, self.blank] -= np.float32(self.length_bonus)
        if frozen.any():
            logp[frozen] = NEG_INF
            logp[frozen, self.blank] = 0.0
        cand = self.scores[:, None] + logp  # (N, V)
        tops, parents, tokens = [], [], []
        vocab = cand.shape[1]
        for b in range(self.batch):
            rows = np.flatnonzero(self.utt == b)
            flat = cand[rows].reshape(-1)
            order = np.argsort(-flat, kind="stable")[: self.beam]
            tops.append(flat[order].tolist())
            parents.append(rows[order // vocab].tolist())
            tokens.append((order % vocab).tolist())
        return tops, parents, tokens

    def advance(self, enc_proj: mx.array, active: Any) -> None:
        """One frame: enc_proj (B, J); active (B,) bool, the utterances that have this frame."""
        active = np.asarray(active, dtype=bool)
        is_open = [True] * len(self.tokens)
        for round_ in range(self.max_symbols):
            last = round_ == self.max_symbols - 1
            frozen = ~(active[self.utt] & np.array(is_open, dtype=bool))
            top, parent, token = self._top(enc_proj, frozen)
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
        """Carry the predictor over from the parents; run it for hypotheses that emitted."""
        parent, emit = np.array(parents, dtype=np.int64), np.array(emits, dtype=np.int64)
        self.pred, self.pstate = self.pred[mx.array(parent)], self.pstate[parent]
        idx = np.flatnonzero(emit >= 0)
        if idx.size == 0:
            return
        out, sub = self.model.predictor(emit[idx, None], self.pstate[idx])
        self.pred[mx.array(idx)] = self.model.joiner.project_predictor(out[:, 0])
        self.pstate[idx] = sub

    def nbest(self) -> list[list[TransducerHypothesis]]:
        """The current hypotheses of each utterance, best first."""
        out: list[list[TransducerHypothesis]] = [[] for _ in range(self.batch)]
        for b, t, f, s in zip(
            self.utt.tolist(), self.tokens, self.frames, self.scores.tolist(), strict=True
        ):
            out[b].append(TransducerHypothesis(list(t), s, frames=list(f)))
        return [sorted(hyps, key=lambda h: h.score, reverse=True) for hyps in out]


def make_search(
    model: Any, batch: int, options: Any, max_symbols_per_frame: int = 4
) -> GreedySearch | BeamSearch:
    """The search of ``options.strategy`` (a ``DecodingOptions``) for ``batch`` utterances."""
    if options.strategy == "beam":
        return BeamSearch(
            model, batch, options.beam_size, max_symbols_per_frame, **options.fusion()
        )
    return GreedySearch(model, batch, max_symbols_per_frame)
