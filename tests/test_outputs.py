"""``lm train``, ``tokenizer train`` and ``prepare`` never write over an input or an earlier
result without ``--overwrite``, and check their inputs and outputs before the long work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mamba_asr.lm
from mamba_asr.cli import main
from mamba_asr.pretrained import bundled_path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """The bundled model as ``<tmp>/model.pt`` (a link), so outputs beside it land in tmp."""
    link = tmp_path_factory.mktemp("model") / "model.pt"
    link.symlink_to(bundled_path())
    return link


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamba-asr: error: "), err
    return err[0]


def no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the LM was trained")

    monkeypatch.setattr(mamba_asr.lm.NgramLM, "train", refuse)


def test_lm_train_never_writes_over_its_text(tmp_path, model_file, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("A B\nB A\n")
    no_training(monkeypatch)
    for extra in ([], ["--overwrite"]):
        assert main(["lm", "train", str(text), "--out", str(text), "--model", str(model_file),
                     *extra]) == 2  # fmt: skip
        assert f"--out {text}: is an input" in one_error_line(capsys)
        assert text.read_text() == "A B\nB A\n"


def test_lm_train_checks_dev_before_training(tmp_path, model_file, capsys, monkeypatch):
    text, out = tmp_path / "t.txt", tmp_path / "lm.npz"
    text.write_text("A B\nB A\n")
    no_training(monkeypatch)
    assert main(["lm", "train", str(text), "--out", str(out), "--model", str(model_file),
                 "--dev", str(tmp_path / "dev.txt")]) == 2  # fmt: skip
    assert "dev.txt: no such text file" in one_error_line(capsys)
    assert not out.exists()


def test_lm_train_keeps_an_existing_lm_unless_overwrite(tmp_path, model_file, capsys):
    text, out = tmp_path / "t.txt", tmp_path / "lm.npz"
    text.write_text("A B\nB A\n")
    out.write_bytes(b"earlier")
    args = ["lm", "train", str(text), "--out", str(out), "--model", str(model_file)]
    assert main(args) == 2
    assert "already exists; --overwrite replaces it" in one_error_line(capsys)
    assert out.read_bytes() == b"earlier"
    assert main([*args, "--overwrite", "--order", "2"]) == 0
    assert mamba_asr.lm.load_ngram(out).order == 2


def test_tokenizer_train_keeps_an_existing_folder_unless_overwrite(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "AB", "duration": 1}) + "\n")
    out = tmp_path / "tok"
    out.mkdir()  # an empty folder is fine
    args = ["tokenizer", "train", "--manifest", str(manifest), "--out", str(out), "--kind", "char"]
    assert main(args) == 0
    before = (out / "tokenizer.json").read_text()
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "XY", "duration": 1}) + "\n")
    assert main(args) == 2
    assert f"--out {out}: already exists; --overwrite" in one_error_line(capsys)
    assert (out / "tokenizer.json").read_text() == before
    assert main([*args, "--overwrite"]) == 0
    assert "XY" in (out / "tokenizer.json").read_text()


def libri_split(root: Path) -> Path:
    folder = root / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    sf.write(folder / "1-2-0000.flac", np.zeros(1600, np.float32), 16000)
    (folder / "1-2.trans.txt").write_text("1-2-0000 A B\n")
    return root / "dev-clean"


def test_prepare_keeps_existing_manifests_unless_overwrite(tmp_path, capsys, monkeypatch):
    split, out = libri_split(tmp_path / "LibriSpeech"), tmp_path / "data"
    out.mkdir()
    (out / "all.jsonl").write_text("earlier\n")
    import mamba_asr.data.librispeech as librispeech

    scan = librispeech.scan_librispeech
    monkeypatch.setattr(librispeech, "scan_librispeech", lambda *a, **k: pytest.fail("scanned"))
    assert main(["prepare", "librispeech", str(split), "--out", str(out)]) == 2
    assert f"manifest {out / 'all.jsonl'}: already exists" in one_error_line(capsys)
    assert (out / "all.jsonl").read_text() == "earlier\n"
    monkeypatch.setattr(librispeech, "scan_librispeech", scan)
    assert main(["prepare", "librispeech", str(split), "--out", str(out), "--overwrite"]) == 0
    assert '"text": "A B"' in (out / "all.jsonl").read_text()
