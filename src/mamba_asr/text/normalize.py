"""Transcript normalisation to LibriSpeech's style: upper-case words, apostrophes, single spaces.

``normalize_transcript("Hello, world! It's 21 o'clock.") == "HELLO WORLD IT'S TWENTY ONE O'CLOCK"``
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

from num2words import num2words

__all__ = ["normalize_transcript", "spell_numbers"]

# typographic apostrophes and quotes that stand for an apostrophe inside words
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u02bc\u2032`\u00b4"})
_LIGATURES = str.maketrans({"æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O"})
_NUMBER = re.compile(
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?(?P<ord>st|nd|rd|th)?(?P<pct>\s?%)?",
    flags=re.IGNORECASE,
)
_NOT_WORD = re.compile(r"[^A-Z']+")


def normalize_transcript(text: str) -> str:
    """LibriSpeech-style transcript: A-Z, apostrophes and single spaces; "" when nothing is left.

    Steps: Unicode NFKC; typographic apostrophes to ``'``; numbers spelled out
    (``spell_numbers``: integers with or without thousands separators, decimals, ordinals,
    percentages); ``&`` to "and"; accents stripped (``é`` -> ``E``, ``æ`` -> ``AE``); upper
    case; every other character (punctuation, hyphens, symbols, other scripts) becomes a word
    break; apostrophes at the edges of a word are dropped (quotes), except a final one after
    S (plural possessive, ``JAMES'``).
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = spell_numbers(text).replace("&", " and ")
    text = _strip_accents(text.translate(_LIGATURES)).upper()
    words = (_trim_apostrophes(w) for w in _NOT_WORD.sub(" ", text).split())
    return " ".join(w for w in words if w)


def spell_numbers(text: str) -> str:
    """Digits to English words (num2words): "21st" -> "twenty-first", "3.5%" -> "three point
    five percent", "1,000" -> "one thousand"; words around stay as they are."""
    return _NUMBER.sub(_number_words, text)


def _number_words(match: re.Match[str]) -> str:
    integer = int(match["int"].replace(",", ""))
    if match["ord"] and not match["frac"]:
        words = num2words(integer, to="ordinal")
    elif match["frac"]:
        words = num2words(Decimal(f"{integer}.{match['frac']}"))
    else:
        words = num2words(integer)
    if match["pct"]:
        words += " percent"
    return f" {words} "


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _trim_apostrophes(word: str) -> str:
    core = word.strip("'")
    if core.endswith("S") and word.endswith("'"):
        return core + "'"
    return core
