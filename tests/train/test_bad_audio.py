"""Bad audio in the manifests: left out of its batch, reported once, counted; a run stopped and
resumed still equals the uninterrupted one; ``--strict`` stops at the first bad file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mamba_asr.cli import main
from mamba_asr.train import list_checkpoints, load_checkpoint, train


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, helpers) -> Path:
    """The tiny corpus with u3's file corrupt (it shares a batch) and a 13th utterance whose
    file is not audio, declared longer than train.max_batch_seconds: a batch of its own."""
    folder = tmp_path_factory.mktemp("bad")
    manifest = helpers.write_corpus(folder)
    (folder / "utt03.wav").write_bytes(b"RIFF" + bytes(60))
    (folder / "long.wav").write_bytes(b"not audio" * 20)
    line = {"id": "u12", "audio": "long.wav", "text": "AB", "duration": 3.5}
    with manifest.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return manifest


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped (bad audio)" in r.getMessage()]


def test_bad_audio_is_skipped_once_and_resume_stays_exact(
    tmp_path, bad_corpus, tiny_recipe, recipe_file, helpers, caplog, capsys
):
    whole = tmp_path / "whole"
    args = helpers.train_args(recipe_file, bad_corpus, whole)
    assert main(args) == 0
    assert "skipped 2 bad audio file(s), listed in train.log" in capsys.readouterr().out
    lines = warned(caplog)  # CMVN, 3 epochs and 3 validations met them: one line each
    assert len(lines) == 2
    assert any("utt03.wav" in x for x in lines) and any(
        "long.wav: cannot decode" in x for x in lines
    )
    assert "skipped (bad audio)" in (whole / "train.log").read_text()
    parts = tmp_path / "parts"
    recipe = tiny_recipe()
    first = train(recipe, bad_corpus, bad_corpus, parts, device="cpu", max_steps=5)
    last = train(recipe, bad_corpus, bad_corpus, parts, device="cpu")
    assert not first.finished and last.finished and last.skipped_audio == 2
    assert rows(parts) == rows(whole)  # every step's loss, every validation
    a, b = (load_checkpoint(list_checkpoints(r / "checkpoints")[-1]) for r in (whole, parts))
    assert a["progress"] == b["progress"]
    for name, tensor in a["model"].items():
        assert tensor.equal(b["model"][name]), name


def test_strict_stops_at_the_first_bad_file(tmp_path, bad_corpus, tiny_recipe):
    with pytest.raises(ValueError, match=r"(utt03|long)\.wav: .*--strict: stopped"):
        train(tiny_recipe(), bad_corpus, bad_corpus, tmp_path / "run", device="cpu", strict=True)
