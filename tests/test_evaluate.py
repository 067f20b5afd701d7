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
