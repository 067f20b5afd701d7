"""``mamba-asr eval``: where hypotheses go, what is never overwritten, bad audio, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mamba_asr.evaluate
from mamba_asr.cli import main
from mamba_asr.evaluate import hypotheses_name
from mamba_asr.pretrained import bundled_path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """The bundled model as ``<tmp>/model.pt`` (a link), so outputs beside it land in tmp."""
    link = tmp_path_factory.mktemp("model") / "model.pt"
    link.symlink_to(bundled_path())
    return link


def write_set(folder: Path, texts=("A B", "B A", "A")) -> Path:
    """WAV files of noise and ``folder/all.jsonl`` (as ``prepare`` names a split's manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(texts):
        path = folder / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": path.name, "text": text, "duration": 0.5}))
    manifest = folder / "all.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run_eval(model_file: Path, data: Path, *extra: str) -> int:
    return main(["eval", str(data), "--model", str(model_file), "--strategy", "greedy",
                 "--device", "cpu", *extra])  # fmt: skip


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamba-asr: error: "), err
    return err[0]


def test_default_names_of_two_sets_differ_and_both_are_kept(tmp_path, model_file, capsys):
    dev, test = write_set(tmp_path / "dev"), write_set(tmp_path / "test")
    assert run_eval(model_file, dev) == 0
    assert run_eval(model_file, test) == 0
    dev_hyps = model_file.with_name(hypotheses_name(dev))
    test_hyps = model_file.with_name(hypotheses_name(test))
    assert dev_hyps != test_hyps
    assert dev_hyps.name.startswith("hyps-dev-all-") and test_hyps.name.startswith("hyps-test-all-")
    assert dev_hyps.is_file() and test_hyps.is_file()
    assert f"hypotheses: {dev_hyps}" in capsys.readouterr().out
    assert hypotheses_name(tmp_path / "dev" / "." / "all.jsonl") == dev_hyps.name  # same set
    assert hypotheses_name(tmp_path / "x" / "dev" / "all.jsonl") != dev_hyps.name


def test_the_manifest_is_never_the_hypotheses_file(tmp_path, model_file, capsys, monkeypatch):
    manifest = write_set(tmp_path / "v")
    before = manifest.read_bytes()
    monkeypatch.chdir(tmp_path / "v")
    for extra in ([], ["--overwrite"]):
        assert run_eval(model_file, Path("all.jsonl"), "--hyps", str(manifest), *extra) == 2
        assert "--hyps" in one_error_line(capsys) and manifest.read_bytes() == before
    assert run_eval(model_file, manifest, "--hyps", str(model_file)) == 2
    assert "is an input" in one_error_line(capsys)


def test_an_earlier_result_is_kept_unless_overwrite(tmp_path, model_file, capsys, monkeypatch):
    manifest = write_set(tmp_path / "set")
    hyps = tmp_path / "hyps-x.jsonl"
    hyps.write_text("earlier result\n")
    monkeypatch.setattr(mamba_asr.evaluate, "evaluate", lambda *a, **k: pytest.fail("decoded"))
    assert run_eval(model_file, manifest, "--hyps", str(hyps)) == 2
    assert "already exists; --overwrite replaces it" in one_error_line(capsys)
    assert hyps.read_text() == "earlier result\n"
    monkeypatch.undo()
    assert run_eval(model_file, manifest, "--hyps", str(hyps), "--overwrite") == 0
    assert len(hyps.read_text().splitlines()) == 3


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_an_unusable_destination_is_refused_before_decoding(
    tmp_path, model_file, capsys, monkeypatch, where
):
    manifest = write_set(tmp_path / "set")
    (tmp_path / "file").write_text("x")
    hyps = tmp_path / "file" / "hyps.jsonl" if where == "under-a-file" else tmp_path / "set"
    monkeypatch.setattr(mamba_asr.evaluate, "evaluate", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(mamba_asr.evaluate, "load_test_set", lambda *a: pytest.fail("read"))
    assert run_eval(model_file, manifest, "--hyps", str(hyps)) == 2
    line = one_error_line(capsys)
    assert f"--hyps {hyps}: " in line
    assert ("is not a folder" if where == "under-a-file" else "is a folder") in line


def corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF" + b"\x00" * 60)


def test_bad_audio_is_skipped_and_counted_and_the_rest_scored(tmp_path, model_file, capsys, caplog):
    manifest = write_set(tmp_path / "set", texts=("A B", "B A", "A", "B"))
    bad = tmp_path / "set" / "u1.wav"
    corrupt(bad)
    assert run_eval(model_file, manifest, "--json", "--batch-seconds", "1") == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert result["utterances"] == 3 and result["skipped"] == 1
    assert "skipped 1 (bad audio)" in out.splitlines()[0]
    lines = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(lines) == 1 and "cannot decode" in lines[0]
    hyps = model_file.with_name(hypotheses_name(manifest)).read_text().splitlines()
    assert [json.loads(h)["id"] for h in hyps] == ["u0", "u2", "u3"]


def test_strict_stops_at_bad_audio_and_keeps_what_was_decoded(tmp_path, model_file, capsys):
    manifest = write_set(tmp_path / "set", texts=("A B", "B A", "A"))
    lines = manifest.read_text().splitlines()
    durations = [0.3, 0.4, 0.5]  # decoded in this order, one per batch; the last one is bad
    manifest.write_text("".join(json.dumps({**json.loads(x), "duration": d}) + "\n"
                                for x, d in zip(lines, durations, strict=True)))  # fmt: skip
    corrupt(tmp_path / "set" / "u2.wav")
    hyps = tmp_path / "h.jsonl"
    assert run_eval(model_file, manifest, "--strict", "--batch-seconds", "0.5",
                    "--hyps", str(hyps)) == 2  # fmt: skip
    line = one_error_line(capsys)
    assert "u2.wav: cannot decode" in line
    assert f"the 2 hypotheses decoded before it are in {hyps}" in line
    assert [json.loads(h)["id"] for h in hyps.read_text().splitlines()] == ["u0", "u1"]


def test_rtf_counts_the_audio_read_not_the_declared_duration(tmp_path, model_file, capsys):
    manifest = write_set(tmp_path / "set")
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**x, "duration": 30.0}) + "\n" for x in lines))
    assert run_eval(model_file, manifest, "--json") == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["audio_seconds"] == pytest.approx(1.5)  # 3 files of 0.5 s
    assert result["rtf"] == pytest.approx(result["decode_seconds"] / 1.5, rel=1e-3)


def test_punctuation_only_references_are_counted_not_nan(tmp_path, model_file, capsys):
    manifest = write_set(tmp_path / "set", texts=("A B", "...", "A"))
    assert run_eval(model_file, manifest, "--json") == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert result["unscored"] == 1 and result["utterances"] == 3
    assert "nan" not in out and "unscored 1 (empty reference)" in out
    only = write_set(tmp_path / "only", texts=("...", "?!"))
    assert run_eval(model_file, only) == 2
    assert "none of the 2 references has words after normalisation" in one_error_line(capsys)


def test_a_bad_file_of_a_librispeech_folder_is_skipped_and_counted(tmp_path, model_file, capsys):
    folder = tmp_path / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"1-2-000{i}.flac", (0.1 * rng.standard_normal(8000)), 16000)
    (folder / "1-2.trans.txt").write_text("1-2-0000 A B\n1-2-0001 B\n1-2-0002 A\n")
    (folder / "1-2-0001.flac").write_bytes(b"")  # the header already fails
    args = ["--json", "--hyps", str(tmp_path / "h.jsonl")]
    assert run_eval(model_file, tmp_path / "dev-clean", *args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["utterances"], result["skipped"]) == (2, 1)
    assert run_eval(model_file, tmp_path / "dev-clean", *args, "--overwrite", "--strict") == 2
    assert "1-2-0001.flac: empty file" in one_error_line(capsys)
