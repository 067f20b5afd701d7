"""Tests for LibriSpeech-style transcript normalisation."""

from __future__ import annotations

import pytest

from mamba_asr.text.normalize import normalize_transcript, spell_numbers

CASES = [
    ("Hello, world!", "HELLO WORLD"),
    ("It's  a\tdog's   life.\n", "IT'S A DOG'S LIFE"),
    ("\u2018Tis the \u201cseason\u201d \u2014 rock-and-roll", "TIS THE SEASON ROCK AND ROLL"),
    ("I can\u2019t", "I CAN'T"),
    ("James' hat and the boys' toys", "JAMES' HAT AND THE BOYS' TOYS"),
    ("'quoted' words", "QUOTED WORDS"),
    ("Caf\u00e9 na\u00efve \u00c6sop Stra\u00dfe", "CAFE NAIVE AESOP STRASSE"),
    ("There were 21 of them", "THERE WERE TWENTY ONE OF THEM"),
    ("0 and 999999", "ZERO AND NINE HUNDRED AND NINETY NINE THOUSAND NINE HUNDRED AND NINETY NINE"),
    ("3,000 men", "THREE THOUSAND MEN"),
    ("the 1st and 22nd", "THE FIRST AND TWENTY SECOND"),
    ("3.5% more", "THREE POINT FIVE PERCENT MORE"),
    ("AT&T", "AT AND T"),
    ("mp3", "MP THREE"),
    ("", ""),
    ("... -- !!", ""),
    ("\u4f60\u597d", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_normalize_transcript(text, expected):
    assert normalize_transcript(text) == expected


def test_librispeech_text_is_unchanged():
    text = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES"
    assert normalize_transcript(text) == text
    assert normalize_transcript("O'ER THE HILL'S BROW") == "O'ER THE HILL'S BROW"


def test_output_alphabet_and_idempotence():
    for text, _ in CASES:
        out = normalize_transcript(text)
        assert set(out) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
        assert "  " not in out and out == out.strip()
        assert normalize_transcript(out) == out


def test_spell_numbers_leaves_words_alone():
    assert spell_numbers("no digits here") == "no digits here"
    assert "one hundred and five" in spell_numbers("105")
