"""Corpus word and character error rates."""

from __future__ import annotations

import math

import pytest

from mamba_asr.text.error_rates import error_rates


def test_error_rates_are_corpus_rates_and_skip_empty_references():
    rates = error_rates(["A B C D", "E F", ""], ["A X C D", "E", "NOISE"])
    assert rates.wer == pytest.approx(2 / 6)  # one substitution, one deletion, 6 words
    assert rates.cer == pytest.approx(3 / 10)  # B->X, " F" deleted; 7 + 3 characters
    assert math.isnan(error_rates([""], ["A"]).wer)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["A", "B"], ["A"])
