"""Decoding: CTC greedy and prefix beam search, joint CTC/attention search for seq2seq models,
transducer greedy and modified beam search (offline and streaming), ``decode_batch``, which
picks the search from ``DecodingOptions``, the rules that resolve those options for a model
(``options``: the default strategy, ``lm="auto"``, fusion weights, the LM's tokenizer check)
and the endpoint rule of streams (``endpoint``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mamba_asr.decode.ctc import PrefixScorer, ctc_greedy, ctc_prefix_beam_search
    from mamba_asr.decode.endpoint import EndpointConfig
    from mamba_asr.decode.hypothesis import Hypothesis
    from mamba_asr.decode.options import DecodingOptions
    from mamba_asr.decode.search import DecodingResult, decode_batch
    from mamba_asr.decode.seq2seq import CTCPrefixScorer, seq2seq_beam_search, seq2seq_greedy
    from mamba_asr.decode.streaming import TransducerStreamer
    from mamba_asr.decode.transducer import (
        TransducerHypothesis,
        transducer_beam_search,
        transducer_greedy,
    )

# names -> the module that defines them, imported on first use (PEP 562), so that the
# torch-free parts (``endpoint``, ``options``) import without torch
_WHERE = {
    "CTCPrefixScorer": "seq2seq", "DecodingOptions": "options", "EndpointConfig": "endpoint",
    "DecodingResult": "search", "Hypothesis": "hypothesis", "PrefixScorer": "ctc",
    "TransducerHypothesis": "transducer", "TransducerStreamer": "streaming",
    "ctc_greedy": "ctc", "ctc_prefix_beam_search": "ctc", "decode_batch": "search",
    "seq2seq_beam_search": "seq2seq", "seq2seq_greedy": "seq2seq",
    "transducer_beam_search": "transducer", "transducer_greedy": "transducer",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "CTCPrefixScorer",
    "DecodingOptions",
    "EndpointConfig",
    "DecodingResult",
    "Hypothesis",
    "PrefixScorer",
    "TransducerHypothesis",
    "TransducerStreamer",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "decode_batch",
    "seq2seq_beam_search",
    "seq2seq_greedy",
    "transducer_beam_search",
    "transducer_greedy",
]
