"""Tests for the character and SentencePiece tokenizers: id layout, round trips, save/load."""

from __future__ import annotations

import json
import pickle

import pytest

from mamba_asr.text.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    train_sentencepiece,
)

TEXTS = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON PIECES",
    "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "THE SQUALID QUARTER OF THE BROTHELS",
    "IT'S THE QUICK BROWN FOX THAT JUMPS OVER THE LAZY DOG",
    "SPEECH RECOGNITION WITH SELECTIVE STATE SPACE MODELS",
] * 5


def check_layout(tok: Tokenizer) -> None:
    assert isinstance(tok, Tokenizer)
    assert (tok.blank_id, tok.pad_id, tok.bos_id, tok.eos_id) == (0, 0, 1, 2)
    for text in TEXTS[:8]:
        ids = tok.encode(text)
        assert ids and min(ids) > 2 and max(ids) < tok.vocab_size  # no specials in encode
        assert tok.decode(ids) == text
        assert tok.decode([1, *ids, 2, 0, 0]) == text  # specials and padding are dropped


def test_char_tokenizer_librispeech_layout():
    tok = CharTokenizer()
    assert tok.vocab_size == 31  # the published character recipes' output layer
    check_layout(tok)
    assert tok.encode(" 'A") == [3, 4, 5]
    assert tok.encode("Z") == [30]


def test_char_tokenizer_unknown_characters():
    with pytest.raises(ValueError, match="'!' is not in the tokenizer's alphabet"):
        CharTokenizer().encode("HI!")
    tok = CharTokenizer(unk=True)
    assert tok.vocab_size == 32 and tok.unk_id == 31
    assert tok.encode("HI!") == [*tok.encode("HI"), 31]
    assert tok.decode(tok.encode("HI!")) == "HI\u2047"


def test_char_tokenizer_from_texts():
    tok = CharTokenizer.from_texts(["abc", "cab d"])
    assert tok.alphabet == " abcd" and tok.vocab_size == 8
    assert tok.decode(tok.encode("bad cab")) == "bad cab"
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aab")


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "char"])
def test_sentencepiece_training_and_layout(tmp_path, model_type):
    size = 32 if model_type == "char" else 40  # char: 28 characters + 4 specials
    tok = train_sentencepiece(TEXTS, tmp_path, vocab_size=size, model_type=model_type)
    assert tok.vocab_size == size
    assert [tok.id_to_piece(i) for i in range(4)] == ["<blank>", "<s>", "</s>", "<unk>"]
    check_layout(tok)
    if model_type == "unigram":
        assert len(tok.encode(TEXTS[0])) < len(TEXTS[0])  # pieces longer than characters


def test_sentencepiece_corpus_too_small_for_vocab(tmp_path):
    with pytest.raises(
        ValueError, match=r"vocab_size=500 is too large .* use vocab_size <= \d+"
    ) as info:
        train_sentencepiece(TEXTS, tmp_path, vocab_size=500)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"vocab_size=10 is too small .* use vocab_size >= \d+"):
        train_sentencepiece(TEXTS, None, vocab_size=10)


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_save_and_load(tmp_path, kind):
    if kind == "char":
        tok = CharTokenizer(unk=True)
        tok.save(tmp_path / "tok")
    else:
        tok = train_sentencepiece(TEXTS, tmp_path / "tok", vocab_size=40)
        assert (tmp_path / "tok" / "spm.model").is_file()
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["kind"] == kind and meta["vocab_size"] == tok.vocab_size
    assert (meta["blank_id"], meta["pad_id"], meta["bos_id"], meta["eos_id"]) == (0, 0, 1, 2)
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    for text in TEXTS[:8]:
        assert loaded.encode(text) == tok.encode(text)
    clone = pickle.loads(pickle.dumps(loaded))  # crosses to DataLoader workers
    assert clone.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "words", "vocab_size": 3}')
    with pytest.raises(ValueError, match="unknown tokenizer kind 'words'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="broken tokenizer metadata"):
        load_tokenizer(tmp_path)


def test_sentencepiece_model_with_other_ids_is_rejected(tmp_path):
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=40, minloglevel=2
    )  # sentencepiece's default layout: unk 0, bos 1, eos 2, no pad
    with pytest.raises(ValueError, match="pad/bos/eos ids"):
        SentencePieceTokenizer(model.getvalue())
