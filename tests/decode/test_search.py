"""DecodingOptions validation and decode_batch's choice of search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.recipes import tiny_recipe
from mamba_asr.decode import (
    DecodingOptions,
    DecodingResult,
    ctc_greedy,
    ctc_prefix_beam_search,
    decode_batch,
    seq2seq_beam_search,
    seq2seq_greedy,
)
from mamba_asr.models.factory import build_model


def tiny(decoder_layers: int) -> nn.Module:
    torch.manual_seed(0)
    cfg = tiny_recipe(
        "seq2seq",
        "model.vocab_size=9",
        f"model.num_decoder_layers={decoder_layers}",
        f"model.kind={'seq2seq' if decoder_layers else 'ctc'}",
    ).model
    return build_model(cfg).eval()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "sample"}, "strategy must be one of 'greedy', 'beam', got 'sample'"),
        ({"beam_size": 0}, "beam_size must be an integer >= 1"),
        ({"beam_size": 2.5}, "beam_size must be an integer >= 1"),
        ({"ctc_weight": -0.1}, r"ctc_weight must be in \[0, 1\]"),
        ({"max_decode_ratio": 0}, "max_decode_ratio must be > 0"),
        ({"lm_weight": 0.3, "lm": None}, "lm_weight and length_bonus need an LM"),
        ({"length_bonus": 1.0, "lm": "none"}, "lm_weight and length_bonus need an LM"),
        ({"lm_weight": float("nan"), "lm": "x.npz"}, "lm_weight must be a finite number"),
        ({"length_bonus": float("inf"), "lm": "x.npz"}, "length_bonus must be a finite"),
        ({"lm_weight": -0.1, "lm": "x.npz"}, "lm_weight must be >= 0"),
        ({"lm": "x.npz", "strategy": "greedy"}, "LM fusion needs strategy 'beam'"),
    ],
)
def test_options_are_checked_once_with_named_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecodingOptions(**kwargs)


def test_options_are_frozen() -> None:
    options = DecodingOptions()
    with pytest.raises(AttributeError):
        options.beam_size = 3  # type: ignore[misc]


def test_ctc_model_searches() -> None:
    model = tiny(0)
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 29])
    out = model(feats, lengths)
    greedy = decode_batch(model, feats, lengths, DecodingOptions(strategy="greedy"))
    assert [r.tokens for r in greedy] == ctc_greedy(out.log_probs, out.lengths)
    assert all(isinstance(r, DecodingResult) and r.score <= 0 for r in greedy)
    beam = decode_batch(model, feats, lengths, DecodingOptions(beam_size=4))
    want = ctc_prefix_beam_search(out.log_probs, out.lengths, beam=4)
    assert [(r.tokens, r.score) for r in beam] == [(h[0].tokens, h[0].score) for h in want]


def test_seq2seq_model_searches() -> None:
    model = tiny(1)
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 29])
    options = DecodingOptions(beam_size=3, ctc_weight=0.3, max_decode_ratio=0.5)
    beam = decode_batch(model, feats, lengths, options)
    want = seq2seq_beam_search(model, feats, lengths, 3, 0.3, True, 0.5)
    assert [(r.tokens, r.score) for r in beam] == [(h[0].tokens, h[0].score) for h in want]
    greedy = decode_batch(model, feats, lengths, DecodingOptions("greedy", ctc_weight=0.0))
    assert [r.tokens for r in greedy] == [h.tokens for h in seq2seq_greedy(model, feats, lengths)]


def test_subclasses_use_their_base_class_search_and_unknown_models_fail() -> None:
    model = tiny(0)

    class MyCTC(type(model)):  # a subclass finds CTCModel's searches
        pass

    model.__class__ = MyCTC
    feats, lengths = torch.randn(1, 40, 80), torch.tensor([40])
    assert len(decode_batch(model, feats, lengths, DecodingOptions("greedy"))) == 1
    with pytest.raises(TypeError, match="no 'beam' search for Linear; models with searches"):
        decode_batch(nn.Linear(2, 2), feats, lengths)


def test_lm_fusion_on_a_ctc_model_is_a_named_error() -> None:
    model = tiny(0)
    feats, lengths = torch.randn(1, 40, 80), torch.tensor([40])
    options = DecodingOptions(strategy="beam", lm="lm.npz", lm_weight=0.3)
    with pytest.raises(ValueError, match="transducer models with beam search only"):
        decode_batch(model, feats, lengths, options)
