"""Decoding options: one set of defaults for the API, the CLI and every helper, and the rules
that turn what a user asked for into what the search runs.

``DecodingOptions`` is what a user states (``strategy="beam"``, ``lm="auto"``, ...);
``options.resolve(model_kind, tokenizer, vocab_size, shipped_lm)`` checks them against one
model and returns the options the search runs with:

- ``lm="auto"``: the LM that ships with the model (a bundled model's ``mamba_asr.pretrained``
  LM), fused only into transducer beam search; with greedy search or another kind of model,
  or a model that ships none, no LM. ``lm=None`` (or ``"none"``): no LM.
- an LM file named explicitly must suit the search (transducer, beam) and the model's
  tokenizer (``mamba_asr.lm.tokenizer_fingerprint``): otherwise a one-line ``ValueError``.
- with an LM, ``lm_weight`` and ``length_bonus`` default to ``LM_WEIGHT`` and
  ``LENGTH_BONUS`` (tuned on the bundled model's dev set: docs/benchmarks.md), so an LM passed
  without a weight is used, never silently ignored; without an LM, giving either is an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from mamba_asr.lm.ngram import load_ngram, tokenizer_fingerprint

__all__ = ["LENGTH_BONUS", "LM_WEIGHT", "DecodingOptions", "Strategy"]

Strategy = Literal["greedy", "beam"]
ModelKind = Literal["ctc", "seq2seq", "transducer"]
LM_WEIGHT, LENGTH_BONUS = 0.3, 1.0  # shallow-fusion defaults (tuned: docs/benchmarks.md)


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode; every value checked once, when built.

    strategy: "greedy" or "beam" (default: beam search, which with the bundled model's LM is
    the most accurate; greedy is the fastest). beam_size: hypotheses kept per utterance.
    ctc_weight: weight of the CTC prefix score in joint CTC/attention search (seq2seq).
    length_normalization: rank finished seq2seq hypotheses by score / (tokens + 1).
    max_decode_ratio: at most this many output tokens per encoder frame (seq2seq).
    lm: ``"auto"``, ``None``/``"none"`` or an n-gram LM file (``mamba-asr lm train``), see the
    module docstring; lm_weight (>= 0) and length_bonus: the shallow-fusion weights, ``None``
    for the defaults.
    """

    strategy: Strategy = "beam"
    beam_size: int = 10
    ctc_weight: float = 0.4
    length_normalization: bool = True
    max_decode_ratio: float = 1.0
    lm: str | None = "auto"
    lm_weight: float | None = None
    length_bonus: float | None = None

    def __post_init__(self) -> None:
        strategies = get_args(Strategy)
        if self.strategy not in strategies:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, strategies))}, got {self.strategy!r}"
            )
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int):
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        _finite("ctc_weight", self.ctc_weight)
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight!r}")
        _finite("max_decode_ratio", self.max_decode_ratio)
        if not self.max_decode_ratio > 0.0:
            raise ValueError(f"max_decode_ratio must be > 0, got {self.max_decode_ratio!r}")
        if self.lm is not None and not isinstance(self.lm, str):
            object.__setattr__(self, "lm", os.fspath(self.lm))  # a Path is a file name too
        if self.lm == "none":
            object.__setattr__(self, "lm", None)
        if self.lm_weight is not None:
            _finite("lm_weight", self.lm_weight)
            if self.lm_weight < 0.0:
                raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight!r}")
        if self.length_bonus is not None:
            _finite("length_bonus", self.length_bonus)
        if self.lm is None and (self.lm_weight is not None or self.length_bonus is not None):
            raise ValueError("lm_weight and length_bonus need an LM (lm)")
        if self.lm not in (None, "auto") and self.strategy != "beam":
            raise ValueError(f"LM fusion needs strategy 'beam', got {self.strategy!r}")

    @property
    def resolved(self) -> bool:
        """Whether ``lm`` names a file or nothing (not ``"auto"``) and the weights are set."""
        return self.lm != "auto" and (
            self.lm is None or (self.lm_weight is not None and self.length_bonus is not None)
        )

    def resolve(
        self,
        kind: ModelKind,
        tokenizer: object | None = None,
        vocab_size: int | None = None,
        shipped_lm: str | os.PathLike[str] | None = None,
    ) -> DecodingOptions:
        """These options for one model: ``lm`` a checked file or ``None``, weights set.

        kind: the model's kind; tokenizer, vocab_size: the model's (for the LM check; skipped
        when ``None``); shipped_lm: the LM that ships with the model (what ``"auto"`` means).
        Raises a one-line ``ValueError`` for an LM that cannot be used here.
        """
        fusable = kind == "transducer" and self.strategy == "beam"
        lm = self.lm
        if lm == "auto":
            lm = os.fspath(shipped_lm) if shipped_lm is not None and fusable else None
            if lm is None and (self.lm_weight is not None or self.length_bonus is not None):
                raise ValueError(
                    "lm_weight and length_bonus need an LM: this model and search use none "
                    "(give lm=FILE, with strategy 'beam' and a transducer model)"
                )
        if lm is None:
            return replace(self, lm=None, lm_weight=None, length_bonus=None)
        if kind != "transducer":
            raise ValueError(f"LM fusion is implemented for transducer models only, not {kind}")
        if self.strategy != "beam":
            raise ValueError(f"LM fusion needs strategy 'beam', got {self.strategy!r}")
        ngram = load_ngram(lm)
        if tokenizer is not None and vocab_size is not None:
            expected = tokenizer_fingerprint(tokenizer, vocab_size)
            if ngram.vocab_size != vocab_size or ngram.fingerprint != expected:
                raise ValueError(f"{lm}: this LM was made with another tokenizer than the model's")
        return replace(
            self,
            lm=str(Path(lm)),
            lm_weight=LM_WEIGHT if self.lm_weight is None else self.lm_weight,
            length_bonus=LENGTH_BONUS if self.length_bonus is None else self.length_bonus,
        )

    def fusion(self) -> dict[str, Any]:
        """The shallow-fusion arguments of a transducer beam search (the LM read, cached).
        ``"auto"`` here (no model to ask) means no LM; a file without weights gets the
        defaults."""
        if self.lm in (None, "auto"):
            return {"lm": None, "lm_weight": 0.0, "length_bonus": 0.0}
        weight = LM_WEIGHT if self.lm_weight is None else self.lm_weight
        bonus = LENGTH_BONUS if self.length_bonus is None else self.length_bonus
        return {"lm": load_ngram(self.lm), "lm_weight": weight, "length_bonus": bonus}


def _finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
