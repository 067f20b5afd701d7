"""Decoding: CTC greedy and prefix beam search, joint CTC/attention search for seq2seq models,
transducer greedy and modified beam search (offline and streaming), ``decode_batch``, which
picks the search from ``DecodingOptions``, the rules that resolve those options for a model
(``options``: the default strategy, ``lm="auto"``, fusion weights, the LM's tokenizer check)
and the endpoint rule of streams (``endpoint``)."""

from __future__ import annotations

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
