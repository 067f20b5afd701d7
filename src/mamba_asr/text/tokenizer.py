"""Tokenizers: characters or SentencePiece, with the id layout the models expect.

Every tokenizer puts the CTC blank and the padding at id 0, the sequence start (bos) at 1 and
the sequence end (eos) at 2 (``ModelConfig``'s ``blank_index``/``pad_index``/``bos_index``/
``eos_index``). ``encode`` never adds bos/eos (the models add them); ``decode`` drops ids 0-2.

A tokenizer is saved as a directory: ``tokenizer.json`` (kind, vocabulary size, special ids,
and the alphabet of a character tokenizer) plus ``spm.model`` for SentencePiece.
``load_tokenizer(directory)`` rebuilds either kind.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import sentencepiece as spm

from mamba_asr.files import read_text

__all__ = [
    "BLANK_ID",
    "BOS_ID",
    "EOS_ID",
    "LIBRISPEECH_ALPHABET",
    "PAD_ID",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_sentencepiece",
]

BLANK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 0, 1, 2
SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")  # ids 0, 1, 2
LIBRISPEECH_ALPHABET = " '" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
METADATA = "tokenizer.json"
SPM_MODEL = "spm.model"
FORMAT_VERSION = 1
_TOO_HIGH = re.compile(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"smaller than required_chars\. \d+ vs (\d+)")


@runtime_checkable
class Tokenizer(Protocol):
    """What training and decoding need from a tokenizer."""

    vocab_size: int
    blank_id: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | os.PathLike[str]) -> Path: ...


class _SpecialIds:
    """The fixed special ids, shared by both tokenizers."""

    blank_id, pad_id, bos_id, eos_id = BLANK_ID, PAD_ID, BOS_ID, EOS_ID


class CharTokenizer(_SpecialIds):
    """One id per character: 0 blank/pad, 1 bos, 2 eos, then the alphabet in order.

    The LibriSpeech alphabet (space, apostrophe, A-Z) gives 3 + 28 = 31 ids, the size of the
    published character recipes' output layer. A character outside the alphabet raises
    ``ValueError`` (normalise transcripts first, see ``normalize_transcript``), unless
    ``unk=True``, which adds an ``<unk>`` id after the alphabet for such characters.
    """

    def __init__(self, alphabet: Iterable[str] = LIBRISPEECH_ALPHABET, unk: bool = False) -> None:
        chars = list(alphabet)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars) or not chars:
            raise ValueError("alphabet must be a non-empty sequence of distinct single characters")
        self.alphabet = "".join(chars)
        self.unk = unk
        self._ids = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self._chars = {i: c for c, i in self._ids.items()}
        self.unk_id = len(SPECIAL_TOKENS) + len(chars) if unk else None
        self.vocab_size = len(SPECIAL_TOKENS) + len(chars) + int(unk)

    @classmethod
    def from_texts(cls, texts: Iterable[str], unk: bool = False) -> CharTokenizer:
        """The sorted set of characters in ``texts`` as the alphabet."""
        return cls(sorted(set().union(*map(set, texts))), unk=unk)

    def encode(self, text: str) -> list[int]:
        """Text -> ids (S,), one per character."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as exc:
            if self.unk_id is None:
                raise ValueError(
                    f"character {exc.args[0]!r} is not in the tokenizer's alphabet "
                    f"{self.alphabet!r} (normalise the text first) in {text!r}"
                ) from None
            return [self._ids.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; blank/pad, bos and eos are dropped, ``<unk>`` shows as ``\u2047``."""
        kept = (i for i in map(int, ids) if i >= len(SPECIAL_TOKENS))
        return "".join(self._chars.get(i, "\u2047") for i in kept)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed); returns the folder."""
        meta = {"alphabet": self.alphabet, "unk": self.unk}
        return _write_metadata(directory, "char", self.vocab_size, meta)


class SentencePieceTokenizer(_SpecialIds):
    """A SentencePiece model whose ids 0-3 are ``<blank>`` (also pad), ``<s>``, ``</s>``, ``<unk>``.

    Built from a model file's bytes (``train_sentencepiece`` makes one); pickles by those bytes,
    so it crosses to DataLoader workers.
    """

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        _check_spm_layout(self._sp)
        self.vocab_size = self._sp.get_piece_size()
        self.unk_id = self._sp.unk_id()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SentencePieceTokenizer:
        return cls(Path(path).read_bytes())

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids (S,)."""
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Piece ids -> text; blank/pad, bos and eos are dropped."""
        return self._sp.decode([i for i in map(int, ids) if i >= len(SPECIAL_TOKENS)])

    def id_to_piece(self, index: int) -> str:
        return self._sp.id_to_piece(index)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``spm.model`` and ``tokenizer.json`` into ``directory``; returns the folder."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / SPM_MODEL).write_bytes(self.model_proto)
        return _write_metadata(out, "sentencepiece", self.vocab_size, {"model": SPM_MODEL})

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self.model_proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"])


def train_sentencepiece(
    texts: Iterable[str],
    directory: str | os.PathLike[str] | None,
    vocab_size: int,
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram",
    character_coverage: float = 1.0,
    num_threads: int = 1,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on ``texts`` (in memory) with ids 0-3 as described above.

    Texts are used as they are (``normalization_rule_name="identity"``; normalise them
    first). Saved to ``directory`` unless it is None. Raises ``ValueError`` (one line) when the
    corpus cannot support ``vocab_size``, saying which size would work.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            pad_id=PAD_ID,
            pad_piece=SPECIAL_TOKENS[0],
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            unk_id=len(SPECIAL_TOKENS),
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(_training_error(str(exc), vocab_size)) from None
    tokenizer = SentencePieceTokenizer(model.getvalue())
    if directory is not None:
        tokenizer.save(directory)
    return tokenizer


def load_tokenizer(directory: str | os.PathLike[str]) -> CharTokenizer | SentencePieceTokenizer:
    """Rebuild the tokenizer saved in ``directory`` (by ``save`` or ``train_sentencepiece``)."""
    folder = Path(directory)
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise ValueError(f"{folder}: not a tokenizer directory (no {METADATA})")
    try:
        meta = json.loads(read_text(meta_path))
        kind = meta["kind"]
        if kind == "char":
            tokenizer: CharTokenizer | SentencePieceTokenizer = CharTokenizer(
                meta["alphabet"], meta["unk"]
            )
        elif kind == "sentencepiece":
            tokenizer = SentencePieceTokenizer.from_file(folder / meta["model"])
        else:
            raise ValueError(
                f"unknown tokenizer kind {kind!r} (expected 'char' or 'sentencepiece')"
            )
    except (KeyError, json.JSONDecodeError, OSError, RuntimeError) as exc:
        raise ValueError(f"{meta_path}: broken tokenizer metadata ({exc!r})") from None
    if tokenizer.vocab_size != meta.get("vocab_size"):
        raise ValueError(
            f"{meta_path}: vocab_size {meta.get('vocab_size')} does not match the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    return tokenizer


def _write_metadata(
    directory: str | os.PathLike[str], kind: str, vocab_size: int, extra: dict[str, Any]
) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab_size,
        "blank_id": BLANK_ID,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        **extra,
    }
    (out / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _check_spm_layout(sp: spm.SentencePieceProcessor) -> None:
    """ValueError unless the model's special ids are pad 0, bos 1, eos 2."""
    got = (sp.pad_id(), sp.bos_id(), sp.eos_id())
    if got != (PAD_ID, BOS_ID, EOS_ID):
        raise ValueError(
            f"SentencePiece model has pad/bos/eos ids {got}, expected {(PAD_ID, BOS_ID, EOS_ID)}: "
            "train it with train_sentencepiece"
        )


def _training_error(message: str, vocab_size: int) -> str:
    """One line for SentencePiece's training failures, with the size that would work."""
    if m := _TOO_HIGH.search(message):
        return (
            f"vocab_size={vocab_size} is too large for this text corpus (at most {m[1]} pieces "
            f"can be learnt from it): use vocab_size <= {m[1]} or train on more text"
        )
    if m := _TOO_LOW.search(message):
        return (
            f"vocab_size={vocab_size} is too small for the {m[1]} characters and special "
            f"tokens in this corpus: use vocab_size >= {m[1]}"
        )
    return "SentencePiece training failed: " + " ".join(message.split())
