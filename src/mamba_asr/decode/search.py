"""Decoding options and one entry point that picks the search for the model and strategy.

Shape key
    B: batch, F: feature frames, C: feature channels (mels).

``SEARCHES`` maps (model class, strategy) to a search function; ``decode_batch`` looks the
model's class (or its nearest registered base class) up there, so adding a model kind or a
strategy is one new entry, not another branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from mamba_asr.decode.ctc import best_path_score, ctc_greedy, ctc_prefix_beam_search
from mamba_asr.decode.hypothesis import Hypothesis
from mamba_asr.decode.seq2seq import seq2seq_beam_search, seq2seq_greedy
from mamba_asr.decode.transducer import transducer_beam_search, transducer_greedy
from mamba_asr.lm.ngram import load_ngram
from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.seq2seq import Seq2SeqModel

try:
    from mamba_asr.models.transducer import TransducerModel
except ModuleNotFoundError as error:  # no transducer model in this checkout: no transducer searches
    if error.name != "mamba_asr.models.transducer":
        raise
    TransducerModel = None

__all__ = ["SEARCHES", "DecodingOptions", "DecodingResult", "Strategy", "decode_batch"]

Strategy = Literal["greedy", "beam"]


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode; checked once, when built.

    strategy: "greedy" or "beam". beam_size: hypotheses kept per utterance ("beam" only).
    ctc_weight: weight of the CTC prefix score against the decoder in joint CTC/attention
    search (seq2seq models; a CTC model is all CTC). length_normalization: rank finished
    seq2seq hypotheses by score / (tokens + 1). max_decode_ratio: at most this many output
    tokens per encoder frame (seq2seq). lm: an n-gram LM file (``mamba-asr lm train``) for
    shallow fusion in transducer beam search, weighted by lm_weight (> 0), each token also
    getting length_bonus (which offsets the LM's preference for fewer tokens).
    """

    strategy: Strategy = "beam"
    beam_size: int = 10
    ctc_weight: float = 0.4
    length_normalization: bool = True
    max_decode_ratio: float = 1.0
    lm: str | None = None
    lm_weight: float = 0.0
    length_bonus: float = 0.0

    def __post_init__(self) -> None:
        strategies = get_args(Strategy)
        if self.strategy not in strategies:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, strategies))}, got {self.strategy!r}"
            )
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight!r}")
        if not self.max_decode_ratio > 0.0:
            raise ValueError(f"max_decode_ratio must be > 0, got {self.max_decode_ratio!r}")
        if self.lm_weight < 0.0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight!r}")
        if self.lm_weight > 0.0 and self.lm is None:
            raise ValueError("lm_weight needs an LM file (lm)")
        if self.lm is not None and self.strategy != "beam":
            raise ValueError(f"LM fusion needs strategy 'beam', got {self.strategy!r}")

    def fusion(self) -> dict[str, Any]:
        """The shallow-fusion arguments of a transducer beam search (``lm`` read, cached)."""
        lm = load_ngram(self.lm) if self.lm is not None else None
        return {"lm": lm, "lm_weight": self.lm_weight, "length_bonus": self.length_bonus}


@dataclass(frozen=True)
class DecodingResult:
    """tokens: output ids of one utterance; score: the search's ranking score (log domain)."""

    tokens: list[int]
    score: float


SearchFn = Callable[[nn.Module, Tensor, Tensor, DecodingOptions], list[DecodingResult]]


def _best(nbests: list[list[Hypothesis]]) -> list[DecodingResult]:
    return [DecodingResult(nbest[0].tokens, nbest[0].score) for nbest in nbests]


def _ctc_greedy(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    out = model(feats, lengths)  # CTCOutput: log_probs (B, T, V), lengths (B,)
    tokens = ctc_greedy(out.log_probs, out.lengths, blank=model.blank)
    scores = best_path_score(out.log_probs, out.lengths).tolist()
    return [DecodingResult(t, s) for t, s in zip(tokens, scores, strict=True)]


def _ctc_beam(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    out = model(feats, lengths)
    return _best(ctc_prefix_beam_search(out.log_probs, out.lengths, o.beam_size, model.blank))


def _s2s_greedy(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    hyps = seq2seq_greedy(model, feats, lengths, o.ctc_weight, o.max_decode_ratio)
    return [DecodingResult(h.tokens, h.score) for h in hyps]


def _s2s_beam(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    nbests = seq2seq_beam_search(
        model, feats, lengths, o.beam_size, o.ctc_weight, o.length_normalization,
        o.max_decode_ratio,
    )  # fmt: skip
    return _best(nbests)


def _rnnt_greedy(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    enc = model.encode(feats, lengths)  # Encoded: memory (B, T, M), lengths (B,)
    hyps = transducer_greedy(model, enc.memory, enc.lengths)
    return [DecodingResult(h.tokens, h.score) for h in hyps]


def _rnnt_beam(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    enc = model.encode(feats, lengths)
    return _best(transducer_beam_search(model, enc.memory, enc.lengths, o.beam_size, **o.fusion()))


SEARCHES: dict[tuple[type[nn.Module], Strategy], SearchFn] = {
    (CTCModel, "greedy"): _ctc_greedy,
    (CTCModel, "beam"): _ctc_beam,
    (Seq2SeqModel, "greedy"): _s2s_greedy,
    (Seq2SeqModel, "beam"): _s2s_beam,
}
if TransducerModel is not None:
    SEARCHES[TransducerModel, "greedy"] = _rnnt_greedy
    SEARCHES[TransducerModel, "beam"] = _rnnt_beam


def _search_for(model: nn.Module, strategy: Strategy) -> SearchFn:
    for cls in type(model).__mro__:
        search = SEARCHES.get((cls, strategy))
        if search is not None:
            return search
    known = sorted({cls.__name__ for cls, _ in SEARCHES})
    raise TypeError(
        f"no {strategy!r} search for {type(model).__name__}; models with searches: "
        f"{', '.join(known)}"
    )


@torch.no_grad()
def decode_batch(
    model: nn.Module, feats: Tensor, feat_lengths: Tensor, options: DecodingOptions | None = None
) -> list[DecodingResult]:
    """Decode a padded batch, feats (B, F, C) with feat_lengths (B,): one result per utterance.

    The model should be in eval mode. Scores: CTC greedy, the best path's log-probability;
    CTC beam, log P_ctc of the tokens; seq2seq, the joint score (length-normalized for beam
    search when ``options.length_normalization``); transducer greedy, the path's
    log-probability; transducer beam (modified beam search), the log-add of the kept paths.
    """
    options = options or DecodingOptions()
    search = _search_for(model, options.strategy)
    if options.lm is not None and search is not _rnnt_beam:
        raise ValueError("LM fusion is implemented for transducer models only")
    return search(model, feats, feat_lengths, options)
