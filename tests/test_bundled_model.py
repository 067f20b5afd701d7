"""The model shipped in the package (``mamba_asr.pretrained.DEFAULT_MODEL``) on ``examples/``.

Skipped only while the model file is not in the source tree; everything else these tests need
(``examples/hello.flac`` and its text ``examples/hello.txt``) must then be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mamba_asr
from mamba_asr.asr import ASR
from mamba_asr.cli import main
from mamba_asr.decode import DecodingOptions
from mamba_asr.decode.options import LENGTH_BONUS, LM_WEIGHT
from mamba_asr.pretrained import bundled_lm, bundled_path
from mamba_asr.text import error_rates, normalize_transcript
from mamba_asr.transcription import transcribe_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
AUDIO, TEXT = EXAMPLES / "hello.flac", EXAMPLES / "hello.txt"

pytestmark = pytest.mark.skipif(
    not bundled_path().is_file(), reason="bundled model file not built yet"
)


@pytest.fixture(scope="module")
def model() -> ASR:
    return mamba_asr.load_model(device="cpu")


def _wer(hypothesis: str) -> float:
    reference = normalize_transcript(TEXT.read_text())
    return error_rates([reference], [normalize_transcript(hypothesis)]).wer


def test_load_model_without_arguments(model):
    assert isinstance(model, ASR) and not model.training
    assert model.sample_rate == 16000
    assert model.config.model.kind == "transducer"


def test_transcribes_the_example(model):
    text = str(mamba_asr.transcribe(model, AUDIO, strategy="greedy"))
    assert _wer(text) <= 0.2, text
    assert _wer(transcribe_file(model, AUDIO).text) <= 0.2


def test_stream_equals_offline(model):
    offline = transcribe_file(model, AUDIO)
    for chunk_ms in (160, 320, 640):
        streamed = transcribe_file(model, AUDIO, chunk_ms=chunk_ms)
        assert streamed.text == offline.text, chunk_ms
        assert streamed.tokens == offline.tokens, chunk_ms


def test_cli_default_model_stream_and_offline(capsys):
    assert main(["transcribe", str(AUDIO), "--format", "json"]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert main(["transcribe", str(AUDIO), "--format", "json", "--stream"]) == 0
    assert json.loads(capsys.readouterr().out) == offline
    assert _wer(offline["text"]) <= 0.2, offline["text"]


SENTENCES = """please call me back when you have a moment
call me when you can
i will call you back in a moment
when you have the time please write to me
"""


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    text = folder / "text.txt"
    text.write_text(SENTENCES * 5)
    out = folder / "lm.npz"
    assert main(["lm", "train", str(text), "--out", str(out), "--order", "4",
                 "--dev", str(text)]) == 0  # fmt: skip
    return out


def test_lm_train_min_count_prunes(tmp_path, capsys):
    from mamba_asr.lm import load_ngram

    text = tmp_path / "text.txt"
    text.write_text(SENTENCES * 3 + "a sentence said only once by anyone\n")
    full, pruned = tmp_path / "full.npz", tmp_path / "pruned.npz"
    assert main(["lm", "train", str(text), "--out", str(full)]) == 0
    assert main(["lm", "train", str(text), "--out", str(pruned), "--min-count", "2"]) == 0
    a, b = load_ngram(full), load_ngram(pruned)
    assert all(len(x) == len(y) for x, y in zip(a.keys[:2], b.keys[:2], strict=True))
    assert all(len(x) > len(y) for x, y in zip(a.keys[2:], b.keys[2:], strict=True))
    capsys.readouterr()
    assert main(["lm", "train", str(text), "--out", str(pruned), "--min-count", "0"]) == 2
    assert "--min-count must be >= 1" in capsys.readouterr().err


def test_bundled_lm_goes_with_the_bundled_model(model, tmp_path):
    from mamba_asr.lm import load_ngram, tokenizer_fingerprint

    path = bundled_lm()
    assert path is not None and path == bundled_lm("mct-small-synth-en")
    lm = load_ngram(path)
    vocab = model.config.model.vocab_size
    assert (lm.vocab_size, lm.order) == (vocab, 5)
    assert lm.fingerprint == tokenizer_fingerprint(model.tokenizer, vocab)
    assert bundled_lm(bundled_path()) == path  # the bundled model's own file: its LM
    assert bundled_lm(tmp_path / "model.pt") is None


@pytest.mark.parametrize(
    "model_arg, lm, strategy, fused",
    [
        (None, "auto", "beam", True),
        ("mct-small-synth-en", "auto", "beam", True),
        (None, "auto", "greedy", False),
        (None, "none", "beam", False),
        ("FILE", "auto", "beam", False),
    ],
)
def test_lm_auto_fuses_the_bundled_lm_into_beam_search(model, model_arg, lm, strategy, fused):
    from mamba_asr.asr import ASR

    if model_arg == "FILE":  # a model file of one's own: no LM ships with it
        asr = ASR.load(bundled_path())
    else:
        asr = mamba_asr.load_model(model_arg, device="cpu")
    got = asr.resolve_options(DecodingOptions(strategy=strategy, lm=lm))
    want = (str(bundled_lm()), LM_WEIGHT, LENGTH_BONUS) if fused else (None, None, None)
    assert (got.lm, got.lm_weight, got.length_bonus) == want


def test_an_lm_without_a_weight_gets_the_default_weight(model, lm_file):
    got = model.resolve_options(DecodingOptions(lm=str(lm_file)))
    assert (got.lm_weight, got.length_bonus) == (LM_WEIGHT, LENGTH_BONUS)
    fused = mamba_asr.transcribe(model, AUDIO, lm=str(lm_file), beam_size=4)
    none = mamba_asr.transcribe(model, AUDIO, lm=None, beam_size=4)
    assert (
        fused.to_json()
        == mamba_asr.transcribe(
            model,
            AUDIO,
            lm=str(lm_file),
            lm_weight=LM_WEIGHT,
            length_bonus=LENGTH_BONUS,
            beam_size=4,
        ).to_json()
    )
    assert _wer(fused.text) <= 0.2 and _wer(none.text) <= 0.2


def test_cli_beam_search_with_the_bundled_lm(capsys):
    assert main(["transcribe", str(AUDIO), "--strategy", "beam", "--beam-size", "4"]) == 0
    text = capsys.readouterr().out.strip()
    assert _wer(text) <= 0.2, text


def test_lm_train_and_fused_transcription(lm_file, capsys):
    capsys.readouterr()
    assert main(["transcribe", str(AUDIO), "--strategy", "beam", "--beam-size", "4",
                 "--lm", str(lm_file)]) == 0  # fmt: skip
    text = capsys.readouterr().out.strip()
    assert _wer(text) <= 0.2, text
    assert main(["transcribe", str(AUDIO), "--strategy", "beam", "--beam-size", "4",
                 "--stream", "--lm", str(lm_file)]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "greedy", "--lm", "{lm}"], "LM fusion needs strategy 'beam'"),
        (["--strategy", "beam", "--lm", "{missing}"], "no such LM file"),
        (["--strategy", "beam", "--lm", "{other}"], "made with another tokenizer"),
        (["--strategy", "greedy", "--lm-weight", "0.5"], "need an LM"),
        (["--lm-weight", "nan"], "lm_weight must be a finite number"),
        (["--length-bonus", "inf"], "length_bonus must be a finite number"),
        (["--strategy", "beam", "--lm", "none", "--length-bonus", "1"], "need an LM"),
    ],
)
def test_lm_errors_are_one_line(lm_file, tmp_path, capsys, extra, message):
    from mamba_asr.lm import NgramLM

    other = NgramLM.train([[5, 6, 7]], 256, 2, fingerprint="another").save(tmp_path / "o.npz")
    names = {"lm": lm_file, "missing": tmp_path / "none.npz", "other": other}
    args = [a.format(**names) for a in extra]
    assert main(["transcribe", str(AUDIO), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: ([str(d / "none.txt")], d / "lm.npz"), "none.txt: no such text file"),
        (lambda d: ([str(d / "empty.txt")], d / "lm.npz"), "no sentences in"),
        (lambda d: ([str(d / "bin.txt")], d / "lm.npz"), "bin.txt:1: not UTF-8 text"),
        (lambda d: ([str(d / "ok.txt")], d), "is a folder; give a file"),
    ],
)
def test_lm_train_bad_input_is_one_line(tmp_path, capsys, make, message):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81 binary")
    (tmp_path / "ok.txt").write_text(SENTENCES)
    texts, out = make(tmp_path)
    assert main(["lm", "train", *texts, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "lm.npz").exists()
