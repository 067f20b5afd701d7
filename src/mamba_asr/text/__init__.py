"""Text: transcript normalisation, tokenizers (characters, SentencePiece) and error rates."""

from __future__ import annotations

from mamba_asr.text.error_rates import ErrorRates, error_rates
from mamba_asr.text.normalize import normalize_transcript, spell_numbers
from mamba_asr.text.tokenizer import (
    BLANK_ID,
    BOS_ID,
    EOS_ID,
    LIBRISPEECH_ALPHABET,
    PAD_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)

__all__ = [
    "BLANK_ID",
    "BOS_ID",
    "EOS_ID",
    "LIBRISPEECH_ALPHABET",
    "PAD_ID",
    "CharTokenizer",
    "ErrorRates",
    "SentencePieceTokenizer",
    "Tokenizer",
    "error_rates",
    "load_tokenizer",
    "normalize_transcript",
    "spell_numbers",
    "train_sentencepiece",
]
