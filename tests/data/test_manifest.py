"""Tests for JSONL manifests: round trip, relative paths, atomic writes, errors with line numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest


def test_round_trip_with_relative_and_absolute_audio(tmp_path):
    outside = tmp_path / "elsewhere" / "c.flac"
    utts = [
        Utterance("a", tmp_path / "data" / "audio" / "a.flac", "HELLO WORLD", 1.25),
        Utterance("b-2", tmp_path / "data" / "b.wav", "IT'S \u00e9T\u00c9", 0.1 + 0.2),
        Utterance("c", outside, "C", 3.0),
    ]
    path = write_manifest(tmp_path / "data" / "train.jsonl", utts)
    assert path == tmp_path / "data" / "train.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["audio"] for line in lines] == ["audio/a.flac", "b.wav", outside.as_posix()]
    assert read_manifest(path) == utts  # durations exact, paths resolved back


def test_manifest_moves_with_its_folder(tmp_path):
    write_manifest(
        tmp_path / "one" / "m.jsonl", [Utterance("a", tmp_path / "one" / "a.wav", "A", 1.0)]
    )
    (tmp_path / "one").rename(tmp_path / "two")
    [utt] = read_manifest(tmp_path / "two" / "m.jsonl")
    assert utt.audio == tmp_path / "two" / "a.wav"


def test_optional_id_defaults_to_file_stem_and_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "x/1089-134686-0000.flac", "text": " HI ", "duration": 2}\n\n')
    [utt] = read_manifest(path)
    assert utt == Utterance("1089-134686-0000", tmp_path / "x" / "1089-134686-0000.flac", "HI", 2.0)
    assert isinstance(utt.duration, float)


GOOD = '{"audio": "a.wav", "text": "A", "duration": 1.0}'
BAD_LINES = [
    ('{"audio": "b.wav", "text": "B", "duration": 1.0', "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"audio": "b.wav"}', "missing key(s) 'text', 'duration'"),
    ('{"audio": "b.wav", "text": "   ", "duration": 1.0}', "empty text"),
    ('{"audio": "b.wav", "text": "B", "duration": "1.0"}', "duration must be a number"),
    ('{"audio": "b.wav", "text": "B", "duration": 0}', "duration must be > 0"),
    ('{"audio": "b.wav", "text": "B", "duration": NaN}', "duration must be > 0"),
    ('{"audio": "", "text": "B", "duration": 1}', "audio must be a non-empty string"),
    ('{"audio": "b.wav", "text": 5, "duration": 1}', "text must be a non-empty string"),
    ('{"audio": "b.wav", "id": "a", "text": "B", "duration": 1}', "id 'a' already used on line 1"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_errors_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_is_atomic(tmp_path):
    """A failure while writing leaves the old manifest as it was and no temporary file."""
    path = write_manifest(tmp_path / "m.jsonl", [Utterance("a", tmp_path / "a.wav", "A", 1.0)])
    before = path.read_bytes()

    def broken():
        yield Utterance("b", tmp_path / "b.wav", "B", 1.0)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_manifest(path, broken())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_relative_manifest_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_manifest(Path("m.jsonl"), [Utterance("a", Path("a.wav").absolute(), "A", 1.0)])
    assert json.loads(Path("m.jsonl").read_text())["audio"] == "a.wav"
    assert read_manifest("m.jsonl")[0].audio == tmp_path / "a.wav"


def test_manifests_load_without_torch(tmp_path):
    """The reader and writer load where torch is not installed (the peers' benchmark and the
    teacher-feature script run so); the package's other names load on first use."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "from mamba_asr.data import Utterance, read_manifest, write_manifest\n"
        f"path = write_manifest({str(tmp_path / 'm.jsonl')!r}, [Utterance('a', 'a.wav', 'HI', 1.0)])\n"
        "print(read_manifest(path)[0].text)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "HI"


def test_lazy_names_resolve():
    import mamba_asr.data as data

    assert data.AsrDataset.__name__ == "AsrDataset" and callable(data.scan_librispeech)
    with pytest.raises(AttributeError, match="no_such_name"):
        data.no_such_name  # noqa: B018
