"""Language models for decoding: a token n-gram model for shallow fusion (``ngram``)."""

from mamba_asr.lm.ngram import NgramLM, load_ngram, tokenizer_fingerprint

__all__ = ["NgramLM", "load_ngram", "tokenizer_fingerprint"]
