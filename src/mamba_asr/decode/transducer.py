"""Transducer (RNN-T) decoding: batched greedy search and modified beam search.

Shape key
    B: batch (utterances or streams), T: encoder frames, M: d_model, P: predictor output,
    J: joiner hidden size, V: vocabulary (blank included), N: hypotheses of all utterances.

Both searches are frame-synchronous and resumable: a search object holds the hypotheses and
the predictor state and ``advance``-s them by one encoder frame, so the offline functions
(``transducer_greedy``, ``transducer_beam_search``) and the streaming decoder
(``mamba_asr.decode.streaming``) run the same code.

The model is used only through this interface (``mamba_asr.models.transducer``):
``model.predictor.init_state(batch, device) -> pstate``, ``model.predictor(tokens (B, U),
pstate) -> (out (B, U, P), pstate)``, ``model.joiner.project_encoder(enc (..., M))``,
``model.joiner.project_predictor(pred (..., P))``, ``model.joiner.join(enc_proj, pred_proj)
-> logits (..., V)`` and ``model.blank``. The predictor state may be a tensor or any nesting of
tuples, lists, dicts and dataclasses of tensors; each tensor's batch dimension is found once by
comparing the states made for batches of 1 and 2 (an LSTM's (h, c) are (layers, B, H)).

Scores are log-probabilities (float32) of the alignment paths the search followed: greedy, of
its one path (emissions, and the blank that ended each frame); modified beam search (icefall's
``modified_beam_search``, extended to up to ``max_symbols_per_frame`` tokens per frame per
hypothesis, as greedy search; hypotheses in the same state merged by log-add), of the sum over
the kept paths that give the tokens. ``frames``
(the frame of each token, for timestamps) follow one path: greedy's, or for beam search the best
of the merged paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mamba_asr.decode.hypothesis import Hypothesis, expand_hypotheses
from mamba_asr.lm.ngram import NgramLM
from mamba_asr.models.streaming import StateOps

__all__ = [
    "BeamSearch",
    "GreedySearch",
    "TransducerHypothesis",
    "transducer_beam_search",
    "transducer_greedy",
]

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TransducerHypothesis(Hypothesis):
    """A ``Hypothesis`` with frames: the encoder frame (0-based) at which each token was emitted."""

    frames: list[int] = field(default_factory=list)


def _start(model: nn.Module, batch: int, device: torch.device | None) -> tuple[Tensor, Any]:
    """Predictor output for the blank start token: (pred_proj (B, J), pstate)."""
    pstate = model.predictor.init_state(batch, device=device)
    start = torch.full((batch, 1), model.blank, dtype=torch.long, device=device)
    out, pstate = model.predictor(start, pstate)  # (B, 1, P)
    return model.joiner.project_predictor(out[:, 0]), pstate


class _FrameSearch:
    """What both searches share: stepping over the frames of a chunk of encoder output."""

    frame: int  # encoder frames consumed so far

    def advance(self, enc_proj: Tensor, active: Tensor) -> None:
        """One frame: enc_proj (B, J); active (B,) bool, the utterances that have this frame."""
        raise NotImplementedError

    def advance_frames(self, enc_proj: Tensor, lengths: Tensor | None = None) -> None:
        """Consume enc_proj (B, T, J), the projected encoder output of the next T frames.

        lengths: (B,) valid frames of this chunk per utterance (None: all T); an utterance past
        its length is frozen.
        """
        batch, frames, _ = enc_proj.shape
        lengths = torch.full((batch,), frames) if lengths is None else lengths
        lengths = lengths.to(enc_proj.device)
        for t in range(frames):
            self.advance(enc_proj[:, t], lengths > t)  # (B, J), (B,)


# --- greedy ----------------------------------------------------------------------------------------


class GreedySearch(_FrameSearch):
    """Batched greedy search, resumable frame by frame.

    Per frame, each active utterance emits the argmax token repeatedly, the predictor updated
    only for the utterances that emitted, until the argmax is blank or it has emitted
    ``max_symbols_per_frame`` tokens in this frame.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: int,
        device: torch.device | None = None,
        max_symbols_per_frame: int = 4,
    ) -> None:
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame!r}")
        self.model, self.blank, self.max_symbols = model, model.blank, max_symbols_per_frame
        self.ops = StateOps(model.predictor.init_state, device)
        self.pred, self.pstate = _start(model, batch, device)  # (B, J), pstate
        self.scores = torch.zeros(batch, device=device)  # (B,) float32
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.frame = 0
        self.base = [0] * batch  # frames each row had consumed before (``stack``)

    @classmethod
    def stack(cls, searches: list[GreedySearch]) -> GreedySearch:
        """One search over the rows of ``searches`` (of one model), each row going on from where
        its search was (its frames counted from its own start); ``unstack`` gives them back."""
        first = searches[0]
        new = cls.__new__(cls)
        new.model, new.blank, new.max_symbols, new.ops = (
            first.model, first.blank, first.max_symbols, first.ops,
        )  # fmt: skip
        new.pred = torch.cat([s.pred for s in searches])  # (B, J)
        new.pstate = first.ops.cat([s.pstate for s in searches])
        new.scores = torch.cat([s.scores for s in searches])  # (B,)
        new.tokens = [t for s in searches for t in s.tokens]  # the same lists, appended to
        new.frames = [f for s in searches for f in s.frames]
        new.base = [s.frame + b for s in searches for b in s.base]
        new.frame = 0
        return new

    def unstack(self, frames: list[int]) -> list[GreedySearch]:
        """The rows as searches of one row each; ``frames[i]``: the frames row i consumed here."""
        out = []
        states = self.ops.split(self.pstate, [1] * len(self.tokens))
        for i, pstate in enumerate(states):
            row = GreedySearch.__new__(GreedySearch)
            row.model, row.blank, row.max_symbols, row.ops = (
                self.model, self.blank, self.max_symbols, self.ops,
            )  # fmt: skip
            row.pred, row.pstate, row.scores = self.pred[i : i + 1], pstate, self.scores[i : i + 1]
            row.tokens, row.frames = [self.tokens[i]], [self.frames[i]]
            row.frame, row.base = self.base[i] + frames[i], [0]
            out.append(row)
        return out

    def advance(self, enc_proj: Tensor, active: Tensor) -> None:
        """One frame: enc_proj (B, J); active (B,) bool, the utterances that have this frame."""
        for _ in range(self.max_symbols):
            logp = self.model.joiner.join(enc_proj, self.pred).float().log_softmax(-1)  # (B, V)
            best_logp, best = logp.max(-1)  # (B,), (B,)
            self.scores += torch.where(active, best_logp, 0.0)
            active = active & (best != self.blank)  # utterances that emitted
            idx = active.nonzero().squeeze(1)  # (K,)
            if idx.numel() == 0:
                break
            emitted = best[idx]  # (K,)
            for i, token in zip(idx.tolist(), emitted.tolist(), strict=True):
                self.tokens[i].append(token)
                self.frames[i].append(self.frame + self.base[i])
            out, sub = self.model.predictor(emitted[:, None], self.ops.index(self.pstate, idx))
            self.pred = self.pred.index_copy(0, idx, self.model.joiner.project_predictor(out[:, 0]))
            self.pstate = self.ops.put(self.pstate, idx, sub)
        self.frame += 1

    def hypotheses(self) -> list[TransducerHypothesis]:
        """The current result of each utterance (a copy)."""
        scores = self.scores.tolist()
        return [
            TransducerHypothesis(list(t), s, frames=list(f))
            for t, f, s in zip(self.tokens, self.frames, scores, strict=True)
        ]

    def nbest(self) -> list[list[TransducerHypothesis]]:
        """One-entry n-best lists (as ``BeamSearch.nbest``)."""
        return [[h] for h in self.hypotheses()]


@torch.no_grad()
def transducer_greedy(
    model: nn.Module, memory: Tensor, lengths: Tensor, max_symbols_per_frame: int = 4
) -> list[TransducerHypothesis]:
    """Greedy search over memory (B, T, M) with lengths (B,) valid frames: one result each.

    Result: tokens, frames (the frame of each token) and score (log-probability of the path).
    """
    search = GreedySearch(model, memory.shape[0], memory.device, max_symbols_per_frame)
    search.advance_frames(model.joiner.project_encoder(memory), lengths)
    return search.hypotheses()


# --- modified beam search --------------------------------------------------------------------------


class BeamSearch(_FrameSearch):
    """Batched modified beam search (icefall's ``modified_beam_search``), resumable by frame,
    with up to ``max_symbols_per_frame`` tokens per frame.

    Per frame, in up to ``max_symbols_per_frame`` expansion rounds, every hypothesis still open
    in this frame is extended by blank (which closes it for the frame) or by one token (it stays
    open; in the last round it closes too, as greedy search stops after that many tokens); closed
    hypotheses carry over unchanged. Of these, the ``beam`` best of each utterance are kept and
    those in the same state (same tokens, both closed, or both open) merged by log-add of their
    scores. The N hypotheses of all utterances lie flat, those of an utterance contiguous.
    With ``max_symbols_per_frame=1`` this is icefall's search exactly; with beam 1 it is greedy
    search with the same limit.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: int,
        device: torch.device | None = None,
        beam: int = 4,
        max_symbols_per_frame: int = 4,
        *,
        lm: NgramLM | None = None,
        lm_weight: float = 0.0,
        length_bonus: float = 0.0,
    ) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam!r}")
        if lm_weight < 0 or (lm_weight > 0 and lm is None):
            raise ValueError(f"lm_weight must be >= 0 and needs an lm, got {lm_weight!r}")
        if lm is not None and lm.vocab_size != model.vocab_size:
            raise ValueError(
                f"the LM has {lm.vocab_size} ids, the model {model.vocab_size}: an LM "
                f"must be trained with the model's tokenizer"
            )
        self.lm, self.lm_weight, self.length_bonus = lm, lm_weight, length_bonus
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame!r}")
        self.model, self.blank, self.beam, self.batch = model, model.blank, beam, batch
        self.max_symbols = max_symbols_per_frame
        self.ops = StateOps(model.predictor.init_state, device)
        self.pred, self.pstate = _start(model, batch, device)  # (N, J), pstate of N
        self.utt = torch.arange(batch, device=device)  # (N,) utterance of each hypothesis
        self.scores = torch.zeros(batch, device=device)  # (N,) float32
        self.tokens: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frames: list[tuple[int, ...]] = [() for _ in range(batch)]
        self.frame = 0

    def _top(self, enc_proj: Tensor, frozen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The best extensions per utterance: scores, parents and tokens, each (B, K).

        frozen: (N,) bool, hypotheses that may only stay as they are (blank at probability 1).
        """
        logp = self.model.joiner.join(enc_proj[self.utt], self.pred).float().log_softmax(-1)
        # shallow fusion and the length bonus: tokens only, not blank
        if self.lm is not None and self.lm_weight > 0:
            fused = self.lm_weight * self.lm.batch_log_probs(self.tokens, logp.device)
            fused[:, self.blank] = 0.0
            logp = logp + fused
        if self.length_bonus:
            logp = logp + self.length_bonus
            logp[:, self.blank] -= self.length_bonus
        if frozen.any():
            logp[frozen] = NEG_INF
            logp[frozen, self.blank] = 0.0
        cand = self.scores[:, None] + logp  # (N, V)
        vocab = cand.shape[1]
        counts = torch.bincount(self.utt, minlength=self.batch)  # (B,)
        starts = counts.cumsum(0) - counts  # (B,) first hypothesis of each utterance
        pos = torch.arange(self.utt.numel(), device=cand.device) - starts[self.utt]  # (N,)
        width = int(counts.max())
        padded = cand.new_full((self.batch, width, vocab), NEG_INF)
        padded[self.utt, pos] = cand
        top, idx = padded.view(self.batch, -1).topk(min(self.beam, width * vocab), dim=-1)
        return top, starts[:, None] + idx // vocab, idx % vocab  # (B, K) each

    def advance(self, enc_proj: Tensor, active: Tensor) -> None:
        """One frame: enc_proj (B, J); active (B,) bool, the utterances that have this frame."""
        is_open = [True] * len(self.tokens)  # every hypothesis starts the frame open
        for round_ in range(self.max_symbols):
            last = round_ == self.max_symbols - 1
            open_mask = torch.tensor(is_open, device=self.scores.device)
            top, parent, token = (
                x.tolist() for x in self._top(enc_proj, ~(active[self.utt] & open_mask))
            )
            e = expand_hypotheses(
                top, parent, token, self.tokens, self.frames, self.frame, self.blank, last
            )
            self._update(e.parents, e.emits)
            device = self.scores.device
            self.scores = torch.tensor(e.scores, dtype=torch.float32, device=device)
            self.utt = torch.tensor(e.utts, dtype=torch.long, device=device)
            self.tokens, self.frames, is_open = e.tokens, e.frames, e.opens
            if not any(is_open):
                break
        self.frame += 1

    def _update(self, parents: list[int], emits: list[int]) -> None:
        """Carry the predictor over from the parents; run it for hypotheses that emitted."""
        device = self.pred.device
        parent = torch.tensor(parents, dtype=torch.long, device=device)  # (N',)
        emit = torch.tensor(emits, dtype=torch.long, device=device)  # (N',) token or -1
        self.pred, self.pstate = self.pred[parent], self.ops.index(self.pstate, parent)
        idx = (emit >= 0).nonzero().squeeze(1)  # (K,)
        if idx.numel() == 0:
            return
        out, sub = self.model.predictor(emit[idx, None], self.ops.index(self.pstate, idx))
        self.pred = self.pred.index_copy(0, idx, self.model.joiner.project_predictor(out[:, 0]))
        self.pstate = self.ops.put(self.pstate, idx, sub)

    def nbest(self) -> list[list[TransducerHypothesis]]:
        """The current hypotheses of each utterance, best first."""
        out: list[list[TransducerHypothesis]] = [[] for _ in range(self.batch)]
        for b, t, f, s in zip(
            self.utt.tolist(), self.tokens, self.frames, self.scores.tolist(), strict=True
        ):
            out[b].append(TransducerHypothesis(list(t), s, frames=list(f)))
        return [sorted(hyps, key=lambda h: h.score, reverse=True) for hyps in out]


@torch.no_grad()
def transducer_beam_search(
    model: nn.Module,
    memory: Tensor,
    lengths: Tensor,
    beam: int = 4,
    max_symbols_per_frame: int = 4,
    *,
    lm: NgramLM | None = None,
    lm_weight: float = 0.0,
    length_bonus: float = 0.0,
) -> list[list[TransducerHypothesis]]:
    """Modified beam search over memory (B, T, M) with lengths (B,): an n-best list each.

    At most ``max_symbols_per_frame`` tokens per frame per hypothesis (beam=1 equals greedy
    search with the same limit; 1 is icefall's modified beam search); n-best lists hold at
    most ``beam`` entries, best first. Shallow fusion: with an n-gram ``lm``
    (``mamba_asr.lm``), each token adds ``lm_weight * log P_lm(token | tokens so far)`` and
    ``length_bonus`` to a hypothesis's score (blank adds neither), so scores then rank rather
    than give probabilities.
    """
    search = BeamSearch(
        model, memory.shape[0], memory.device, beam, max_symbols_per_frame,
        lm=lm, lm_weight=lm_weight, length_bonus=length_bonus,
    )  # fmt: skip
    search.advance_frames(model.joiner.project_encoder(memory), lengths)
    return search.nbest()
