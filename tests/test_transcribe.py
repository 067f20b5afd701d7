"""``mamba-asr transcribe`` and ``mamba_asr.transcription`` on tiny random models.

A random model's words are arbitrary: the tests check structure, times, exit codes and error
lines, not text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.recipes import tiny_asr
from mamba_asr.asr import ASR
from mamba_asr.audio import load_audio
from mamba_asr.cli import main
from mamba_asr.decode import DecodingOptions, ctc_greedy
from mamba_asr.decode.ctc import ctc_runs
from mamba_asr.text import CharTokenizer
from mamba_asr.transcript import Segment, Transcript, Word, make_segment
from mamba_asr.transcription import transcribe_file
from mamba_asr.writers import cues

TIME = re.compile(r"^\d\d:\d\d:\d\d([,.])\d\d\d --> \d\d:\d\d:\d\d\1\d\d\d$")


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory) -> str:
    asr = tiny_asr("ctc", blank_bias=-5.0)  # emits tokens, so times are exercised
    return str(asr.save(tmp_path_factory.mktemp("ctc") / "model.pt"))


@pytest.fixture(scope="module")
def rnnt_model(tmp_path_factory) -> str:
    asr = tiny_asr("transducer", blank_bias=-5.0)  # emits on every frame
    return str(asr.save(tmp_path_factory.mktemp("rnnt") / "model.pt"))


def _noise(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def good_wav(tmp_path) -> str:
    path = tmp_path / "good.wav"
    sf.write(path, _noise(2.0), 16000)
    return str(path)


def _check_times(t: Transcript, duration: float) -> None:
    assert t.tokens, "the biased model should emit tokens"
    prev = 0.0
    for tok in t.tokens:
        assert tok.start is not None and tok.end is not None
        assert 0.0 <= tok.start <= tok.end <= duration + 1e-6
        assert tok.start >= prev - 1e-6  # monotonic
        prev = tok.start
    for w in t.words:
        assert w.start is not None and w.end is not None
        assert 0.0 <= w.start <= w.end <= duration + 1e-6
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)


def test_ctc_json_keys_and_times(ctc_model, good_wav, capsys):
    argv = ["transcribe", good_wav, "--model", ctc_model, "--format", "json"]
    assert main([*argv, "--strategy", "greedy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert set(data) == {"file", "text", "duration", "segments", "tokens", "words"}
    assert data["file"] == good_wav
    for item in data["tokens"] + data["words"]:
        assert set(item) == {"text", "start", "end"}
    t = transcribe_file(ASR.load(ctc_model), good_wav, DecodingOptions(strategy="greedy"))
    assert t.text == data["text"]
    _check_times(t, 2.0)
    assert "".join(w.text for w in t.words) == t.text.replace(" ", "")


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_transducer_json_times(rnnt_model, good_wav, capsys, strategy):
    argv = ["transcribe", good_wav, "--model", rnnt_model, "--format", "json"]
    assert main([*argv, "--strategy", strategy]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"file", "text", "duration", "segments", "tokens", "words"}
    t = transcribe_file(ASR.load(rnnt_model), good_wav, DecodingOptions(strategy=strategy))
    assert t.to_json() == json.dumps(data, ensure_ascii=False)
    _check_times(t, 2.0)  # this seeded random transducer emits tokens; both searches give times


def test_long_audio_is_chunked_with_offset_times(ctc_model, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _noise(65.0), 16000)  # three windows: 30 + 30 + 5 s
    t = transcribe_file(ASR.load(ctc_model), path, DecodingOptions(strategy="greedy"))
    assert t.duration == pytest.approx(65.0)
    _check_times(t, 65.0)
    assert max(tok.start for tok in t.tokens) >= 60.0  # last window's times are offset
    assert [(s.start, s.end) for s in t.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]


def test_a_waveform_is_transcribed_as_its_file(ctc_model, tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, _noise(7.3, 22050, channels=2), 22050)
    asr = ASR.load(ctc_model)
    options = DecodingOptions(strategy="greedy")
    from_file = transcribe_file(asr, path, options)
    wave, rate = sf.read(path, dtype="float32")
    from mamba_asr.transcription import transcribe_waveform

    from_wave = transcribe_waveform(asr, wave.mean(axis=1), rate, options)
    assert from_wave.segments == from_file.segments
    np.testing.assert_allclose(load_audio(path, 16000).shape[0] / 16000, from_file.duration)


def test_beam_gives_tokens_without_times(ctc_model, good_wav):
    t = transcribe_file(ASR.load(ctc_model), good_wav, DecodingOptions(strategy="beam"))
    assert all(tok.start is None and tok.end is None for tok in t.tokens)
    assert cues(t) == ([(0.0, t.duration, t.text)] if t.text else [])  # CTC beam: no times


def test_srt_and_vtt_syntax(ctc_model, good_wav, capsys):
    assert main(["transcribe", good_wav, "--model", ctc_model, "--format", "srt"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert blocks and blocks[0]
    for i, block in enumerate(blocks, start=1):
        number, timing, text = block.split("\n")
        assert number == str(i) and TIME.match(timing) and "," in timing and text
    assert main(["transcribe", good_wav, "--model", ctc_model, "--format", "vtt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("WEBVTT\n\n")
    for block in out.strip().split("\n\n")[1:]:
        timing, text = block.split("\n")
        assert TIME.match(timing) and "." in timing and text


def test_cues_split_by_words_and_seconds():
    words = [Word(f"W{i}", i * 0.3, i * 0.3 + 0.2) for i in range(20)]
    text = " ".join(w.text for w in words)
    t = Transcript("f", text, [Segment(text, 0.0, 6.0, [], words)], 6.0)
    out = cues(t)
    assert sum(len(text.split()) for _, _, text in out) == 20
    for start, end, text in out:
        assert len(text.split()) <= 7 and end - start <= 3.5 + 1e-9


class _Pieces:
    """A SentencePiece-like tokenizer of four pieces."""

    pieces = ["\u2581he", "llo", "\u2581wo", "rld"]

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids).replace("\u2581", " ").strip()


def test_words_from_char_and_sentencepiece_surfaces():
    tok = CharTokenizer("AB ")
    ids = tok.encode("AB A")
    spans = [(i, i) for i in range(len(ids))]
    seg = make_segment(tok, ids, spans, 1.0, 0.0, 10.0)
    assert seg.words == [Word("AB", 0.0, 2.0), Word("A", 3.0, 4.0)]
    seg = make_segment(_Pieces(), [0, 1, 2, 3], [(i, i) for i in range(4)], 1.0, 0.0, 10.0)
    assert seg.words == [Word("hello", 0.0, 2.0), Word("world", 2.0, 4.0)]
    assert seg.text == "hello world" and [t.text for t in seg.tokens] == _Pieces.pieces


def test_several_files_one_bad_in_the_middle(ctc_model, good_wav, tmp_path, capsys):
    bad = tmp_path / "missing.wav"
    code = main(["transcribe", good_wav, str(bad), good_wav, "--model", ctc_model])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{good_wav}: ") for line in lines)
    assert err.strip() == f"mamba-asr: error: {bad}: no such file"


def _bad_files(tmp_path) -> dict[str, str]:
    """name -> expected words in the error line."""
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "empty.wav").write_bytes(b"")
    flac = tmp_path / "full.flac"
    sf.write(flac, _noise(2.0), 16000)
    (tmp_path / "cut.flac").write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    nan = _noise(1.0)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    return {
        "missing.wav": "no such file",
        "dir.wav": "directory",
        "empty.wav": "empty file",
        "cut.flac": "truncated",
        "text.wav": "cannot decode",
        "nan.wav": "NaN",
    }


def test_bad_inputs_give_one_line_each(ctc_model, tmp_path, capsys):
    bad = _bad_files(tmp_path)
    for name, words in bad.items():
        path = str(tmp_path / name)
        code = main(["transcribe", path, "--model", ctc_model])
        out, err = capsys.readouterr()
        assert code == 1, name
        assert out == ""
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"mamba-asr: error: {path}: "), err
        assert words in err, err


@pytest.mark.parametrize(
    ("name", "wave", "rate"),
    [
        ("8k.wav", _noise(1.0, 8000), 8000),
        ("48k.wav", _noise(1.0, 48000), 48000),
        ("stereo.wav", _noise(1.0, 16000, channels=2), 16000),
        ("silence.wav", np.zeros(16000, dtype=np.float32), 16000),
        ("short.wav", _noise(0.1), 16000),
        ("tiny.wav", _noise(0.01), 16000),
        ("flac.flac", _noise(1.0), 16000),
    ],
)
def test_odd_but_valid_audio_transcribes(ctc_model, tmp_path, capsys, name, wave, rate):
    path = tmp_path / name
    sf.write(path, wave, rate)
    assert main(["transcribe", str(path), "--model", ctc_model, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["file"] == str(path) and isinstance(data["text"], str)
    assert "error" not in err


def test_usage_errors_exit_2(tmp_path, good_wav, capsys):
    assert main(["transcribe", good_wav, "--model", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "not a file" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["transcribe", good_wav, "--model", "m.pt", "--format", "doc"])
    assert exc.value.code == 2


def test_public_transcribe_function_is_not_shadowed():
    import mamba_asr
    import mamba_asr.transcription  # noqa: F401

    assert callable(mamba_asr.transcribe)


def test_ctc_runs_match_ctc_greedy():
    best = [0, 3, 3, 0, 3, 4, 4, 0, 0, 5]
    runs = ctc_runs(best, blank=0)
    log_probs = torch.nn.functional.one_hot(torch.tensor([best]), 6).float().log()
    assert [r[0] for r in runs] == ctc_greedy(log_probs, torch.tensor([len(best)]))[0]
    assert [r[1:] for r in runs] == [(1, 2), (4, 4), (5, 6), (9, 9)]


def test_seq2seq_has_no_times_and_one_cue(tmp_path, good_wav, capsys):
    model = str(tiny_asr("seq2seq").save(tmp_path / "s2s.pt"))
    t = transcribe_file(ASR.load(model), good_wav)
    assert all(x.start is None and x.end is None for x in t.tokens + t.words)
    assert cues(t) == ([(0.0, pytest.approx(2.0), t.text)] if t.text else [])
    assert main(["transcribe", good_wav, "--model", model, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(w["start"] is None and w["end"] is None for w in data["words"])


def test_progress_bar_only_when_asked(ctc_model, good_wav, capsys):
    asr = ASR.load(ctc_model)
    quiet = transcribe_file(asr, good_wav)
    assert capsys.readouterr().err == ""
    shown = transcribe_file(asr, good_wav, progress=True)
    assert good_wav in capsys.readouterr().err
    assert shown.text == quiet.text


def test_output_dir_writes_one_file_per_input_and_never_over_one(
    ctc_model, good_wav, tmp_path, capsys
):
    other = tmp_path / "sub" / "other.wav"
    other.parent.mkdir()
    other.write_bytes(Path(good_wav).read_bytes())
    out = tmp_path / "out"
    argv = ["transcribe", good_wav, str(other), "--model", ctc_model, "--format", "srt"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out == ""
    for name in ("good.srt", "other.srt"):  # each file's cues numbered from 1, from 0 s
        blocks = (out / name).read_text().strip().split("\n\n")
        assert blocks[0].startswith("1\n") and TIME.match(blocks[0].split("\n")[1])
    before = (out / "good.srt").read_text()
    (out / "good.srt").write_text("mine")
    assert main([*argv, "--output-dir", str(out)]) == 2
    assert "good.srt: exists (--overwrite to replace it)" in capsys.readouterr().err
    assert (out / "good.srt").read_text() == "mine"
    assert main([*argv, "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "good.srt").read_text() == before
    assert main([*argv]) == 2  # several subtitle files on stdout: no
    assert "srt of several files needs --output-dir" in capsys.readouterr().err
    twin = tmp_path / "twin" / "good.wav"
    twin.parent.mkdir()
    twin.write_bytes(Path(good_wav).read_bytes())
    assert main(["transcribe", good_wav, str(twin), "--model", ctc_model, "--output-dir",
                 str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "would both be written to" in capsys.readouterr().err


def test_txt_prints_one_line_per_segment(rnnt_model, tmp_path, capsys):
    from mamba_asr.writers import format_transcript

    path = tmp_path / "long.wav"
    sf.write(path, _noise(25.0), 16000)
    asr = ASR.load(rnnt_model)
    t = transcribe_file(asr, path, DecodingOptions(strategy="greedy"))
    assert len(t.segments) > 1  # the model emits on every frame: 20 s segments at most
    assert format_transcript(t, "txt").splitlines() == [s.text for s in t.segments]
    assert main(["transcribe", str(path), "--model", rnnt_model, "--strategy", "greedy"]) == 0
    assert capsys.readouterr().out == format_transcript(t, "txt")


def test_chunk_ms_without_stream_and_low_rates(ctc_model, good_wav, tmp_path, capsys, caplog):
    assert main(["transcribe", good_wav, "--model", ctc_model, "--chunk-ms", "320"]) == 2
    assert "--chunk-ms applies to --stream only" in capsys.readouterr().err
    low = tmp_path / "1k.wav"
    sf.write(low, _noise(1.0, 1000), 1000)
    with caplog.at_level("WARNING"):
        assert main(["transcribe", str(low), "--model", ctc_model]) == 0
    assert "recorded at 1000 Hz" in caplog.text
