"""One entry point that picks the search for the model and strategy.

Shape key
    B: batch, F: feature frames, C: feature channels (mels).

``SEARCHES`` maps (model class, strategy) to a search function; ``decode_batch`` looks the
model's class (or its nearest registered base class) up there, so adding a model kind or a
strategy is one new entry, not another branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamba_asr.decode.ctc import best_path_score, ctc_prefix_beam_search, ctc_runs
from mamba_asr.decode.hypothesis import Hypothesis
from mamba_asr.decode.options import DecodingOptions, Strategy
from mamba_asr.decode.seq2seq import seq2seq_beam_search, seq2seq_greedy
from mamba_asr.decode.transducer import (
    TransducerHypothesis,
    transducer_beam_search,
    transducer_greedy,
)
from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.seq2seq import Seq2SeqModel

try:
    from mamba_asr.models.transducer import TransducerModel
except ModuleNotFoundError as error:  # no transducer model in this checkout: no transducer searches
    if error.name != "mamba_asr.models.transducer":
        raise
    TransducerModel = None

__all__ = [
    "SEARCHES",
    "DecodingOptions",
    "DecodingResult",
    "Strategy",
    "decode_batch",
    "transducer_result",
]


@dataclass(frozen=True)
class DecodingResult:
    """One utterance's result.

    tokens: output ids; score: the search's ranking score (log domain); frames: encoder
    frames of the utterance; spans: the first and last encoder frame (0-based) of each token,
    or ``None`` where the search gives no alignment (CTC prefix beam search, seq2seq).
    CTC greedy: a token's collapsed run of the best path; transducer: the frame that emitted
    it (first == last).
    """

    tokens: list[int]
    score: float
    frames: int = 0
    spans: list[tuple[int, int]] | None = None


SearchFn = Callable[[nn.Module, Tensor, Tensor, DecodingOptions], list[DecodingResult]]


def _ctc_greedy(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    out = model(feats, lengths)  # CTCOutput: log_probs (B, T, V), lengths (B,)
    paths = out.log_probs.argmax(-1).tolist()  # (B, T) best label per frame
    scores = best_path_score(out.log_probs, out.lengths).tolist()
    results = []
    for path, n, score in zip(paths, out.lengths.tolist(), scores, strict=True):
        runs = ctc_runs(path[:n], model.blank)
        results.append(DecodingResult([r[0] for r in runs], score, n, [r[1:] for r in runs]))
    return results


def _ctc_beam(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    out = model(feats, lengths)
    nbests = ctc_prefix_beam_search(out.log_probs, out.lengths, o.beam_size, model.blank)
    return _best(nbests, out.lengths)


def _best(nbests: list[list[Hypothesis]], frames: Tensor) -> list[DecodingResult]:
    return [
        DecodingResult(nbest[0].tokens, nbest[0].score, n)
        for nbest, n in zip(nbests, frames.tolist(), strict=True)
    ]


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
    return [DecodingResult(n[0].tokens, n[0].score) for n in nbests]


def transducer_result(hyp: TransducerHypothesis, frames: int) -> DecodingResult:
    """A transducer hypothesis as a ``DecodingResult`` (each token's span is its frame)."""
    return DecodingResult(hyp.tokens, hyp.score, frames, [(f, f) for f in hyp.frames])


def _rnnt_greedy(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    enc = model.encode(feats, lengths)  # Encoded: memory (B, T, M), lengths (B,)
    hyps = transducer_greedy(model, enc.memory, enc.lengths)
    return [transducer_result(h, n) for h, n in zip(hyps, enc.lengths.tolist(), strict=True)]


def _rnnt_beam(
    model: nn.Module, feats: Tensor, lengths: Tensor, o: DecodingOptions
) -> list[DecodingResult]:
    enc = model.encode(feats, lengths)
    nbests = transducer_beam_search(model, enc.memory, enc.lengths, o.beam_size, **o.fusion())
    return [transducer_result(b[0], n) for b, n in zip(nbests, enc.lengths.tolist(), strict=True)]


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
    if options.lm not in (None, "auto") and search is not _rnnt_beam:
        raise ValueError("LM fusion is implemented for transducer models with beam search only")
    return search(model, feats, feat_lengths, options)
