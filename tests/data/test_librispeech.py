"""Tests for the LibriSpeech reader on a small synthetic tree of FLAC files and transcripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_asr.audio.io import AudioError
from mamba_asr.data.librispeech import find_splits, prepare_librispeech, scan_librispeech
from mamba_asr.data.manifest import read_manifest

# split -> speaker -> chapter -> [(utterance number, transcript, seconds)]
TREE = {
    "train-clean-100": {
        "19": {"198": [(0, "NORTHANGER ABBEY", 0.5), (1, "CHAPTER ONE", 0.25)]},
        "103": {"1240": [(5, "I'LL TELL YOU", 0.75)], "1241": [(0, "TO BE SURE", 0.3)]},
    },
    "dev-clean": {"84": {"121123": [(0, "GO DO YOU HEAR", 0.4)]}},
}


def make_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, speakers in TREE.items():
        for speaker, chapters in speakers.items():
            for chapter, utts in chapters.items():
                folder = root / split / speaker / chapter
                folder.mkdir(parents=True)
                lines = []
                for number, text, seconds in utts:
                    utt_id = f"{speaker}-{chapter}-{number:04d}"
                    wave = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
                    sf.write(folder / f"{utt_id}.flac", wave, 16000)
                    lines.append(f"{utt_id} {text}\n")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))


@pytest.fixture
def libri(tmp_path: Path) -> Path:
    make_tree(tmp_path / "LibriSpeech")
    return tmp_path / "LibriSpeech"


def test_scan_split(libri):
    result = scan_librispeech(libri / "train-clean-100", progress=False)
    assert result.skipped == 0
    assert [u.id for u in result.utterances] == [
        "103-1240-0005",
        "103-1241-0000",
        "19-198-0000",
        "19-198-0001",
    ]
    first = result.utterances[0]
    assert first.text == "I'LL TELL YOU" and first.duration == pytest.approx(0.75)
    assert first.audio == libri / "train-clean-100" / "103" / "1240" / "103-1240-0005.flac"
    assert first.audio.is_absolute()


def test_corrupt_and_missing_audio(libri):
    split = libri / "train-clean-100"
    bad = split / "19" / "198" / "19-198-0001.flac"
    bad.write_bytes(b"not a flac file at all" * 10)
    with pytest.raises(AudioError) as info:
        scan_librispeech(split, progress=False)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)
    (split / "103" / "1241" / "103-1241-0000.flac").unlink()
    result = scan_librispeech(split, skip_bad=True, progress=False)
    assert result.skipped == 2 and len(result.utterances) == 2
    assert any(str(bad) in p for p in result.problems)
    assert any("103-1241-0000.flac: no such file" in p for p in result.problems)


def test_bad_transcript_line(libri):
    trans = libri / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    trans.write_text(trans.read_text() + "84-121123-0001\n")
    with pytest.raises(ValueError, match=rf"{trans}:2: expected 'UTTERANCE-ID TRANSCRIPT'"):
        scan_librispeech(libri / "dev-clean", progress=False)
    assert scan_librispeech(libri / "dev-clean", skip_bad=True, progress=False).skipped == 1


def test_find_splits(libri, tmp_path):
    assert find_splits(libri) == [
        ("dev-clean", libri / "dev-clean"),
        ("train-clean-100", libri / "train-clean-100"),
    ]
    assert find_splits(tmp_path) == find_splits(libri)  # the archives' top folder is looked into
    assert find_splits(libri / "dev-clean") == [("all", libri / "dev-clean")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LibriSpeech split found"):
        find_splits(tmp_path / "empty")
    with pytest.raises(ValueError, match="no LibriSpeech transcripts"):
        scan_librispeech(tmp_path / "empty", progress=False)


def test_prepare_writes_one_manifest_per_split(libri, tmp_path):
    paths = prepare_librispeech(libri, tmp_path / "manifests", progress=False)
    assert [p.name for p in paths] == ["dev-clean.jsonl", "train-clean-100.jsonl"]
    train = read_manifest(paths[1])
    assert train == scan_librispeech(libri / "train-clean-100", progress=False).utterances
    [single] = prepare_librispeech(libri / "dev-clean", tmp_path / "one", progress=False)
    assert single.name == "all.jsonl" and read_manifest(single)[0].text == "GO DO YOU HEAR"


def test_prepare_skip_bad(libri, tmp_path, caplog):
    (libri / "dev-clean" / "84" / "121123" / "84-121123-0000.flac").write_bytes(b"junk" * 50)
    with pytest.raises(AudioError):
        prepare_librispeech(libri, tmp_path / "m", progress=False)
    paths = prepare_librispeech(libri, tmp_path / "m", skip_bad=True, progress=False)
    assert read_manifest(paths[0]) == [] and len(read_manifest(paths[1])) == 4
    assert "dev-clean: skipped 1 bad utterances" in caplog.text


def flip_a_bit(path: Path) -> None:
    """A bit flipped in the middle: the header still reads, decoding fails its checksum."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_prepare_decodes_every_file_so_a_flipped_bit_is_skipped(libri, tmp_path, caplog):
    bad = libri / "train-clean-100" / "103" / "1240" / "103-1240-0005.flac"
    flip_a_bit(bad)
    assert len(scan_librispeech(libri / "train-clean-100", progress=False).utterances) == 4
    with pytest.raises(AudioError, match="corrupt"):
        prepare_librispeech(libri, tmp_path / "m", progress=False)
    paths = prepare_librispeech(libri, tmp_path / "m", skip_bad=True, progress=False)
    assert "103-1240-0005" not in {u.id for u in read_manifest(paths[1])}
    assert len(read_manifest(paths[1])) == 3
    lines = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(lines) == 1 and "corrupt" in lines[0]
    assert "train-clean-100: skipped 1 bad utterances" in caplog.text


def test_prepare_command_skips_by_default_and_stops_with_strict(libri, tmp_path, capsys, caplog):
    from mamba_asr.cli import main

    bad = libri / "dev-clean" / "84" / "121123" / "84-121123-0000.flac"
    flip_a_bit(bad)
    assert main(["prepare", "librispeech", str(libri), "--out", str(tmp_path / "a")]) == 0
    assert read_manifest(tmp_path / "a" / "dev-clean.jsonl") == []
    assert f"skipped: {bad}: corrupt" in caplog.text
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal
    assert main(["prepare", "librispeech", str(libri), "--out", str(tmp_path / "b"),
                 "--strict"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mamba-asr: error: {bad}: corrupt"), err
    assert not (tmp_path / "b" / "dev-clean.jsonl").exists()
    with pytest.raises(SystemExit):
        main(["prepare", "librispeech", str(libri), "--out", str(tmp_path / "c"), "--strict",
              "--skip-bad"])  # fmt: skip
