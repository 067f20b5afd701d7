"""Checkpoints: atomic saves, safe loads, listing, cleaning, averaging."""

from __future__ import annotations

import os

import pytest
import torch

from mamba_asr.train import checkpoints as ck
from mamba_asr.train.checkpoints import (
    CheckpointError,
    average_checkpoints,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    remove_temp_files,
    save_checkpoint,
)


def state(value: float, count: int = 0) -> dict:
    return {
        "model": {"w": torch.full((2, 3), value), "n": torch.tensor(count),
                  "h": torch.full((2,), value, dtype=torch.bfloat16)},
        "step": count, "rng": (3, tuple(range(5)), None), "note": "text", "blob": b"\x00\x01",
    }  # fmt: skip


def test_save_then_load_round_trips_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / checkpoint_name(7), state(1.5, 7))
    assert path.name == "step-00000007.pt"
    loaded = load_checkpoint(path)
    assert loaded["format"] == ck.CHECKPOINT_FORMAT
    assert torch.equal(loaded["model"]["w"], torch.full((2, 3), 1.5))
    assert loaded["rng"] == (3, (0, 1, 2, 3, 4), None) and loaded["blob"] == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / checkpoint_name(1), state(1.0))
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.write(b"half")  # a write cut short
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, state(2.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((2, 3), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_listing_sorts_by_step_and_ignores_temp_and_other_files(tmp_path):
    for step in (12, 3, 100):
        save_checkpoint(tmp_path / checkpoint_name(step), state(0.0, step))
    (tmp_path / "step-00000200.pt.tmp-4242").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "step-5.pt").write_bytes(b"")  # not a name the trainer writes
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000003.pt", "step-00000012.pt", "step-00000100.pt",
    ]  # fmt: skip
    assert list_checkpoints(tmp_path / "missing") == []
    removed = remove_temp_files(tmp_path)
    assert [p.name for p in removed] == ["step-00000200.pt.tmp-4242"]
    assert not (tmp_path / "step-00000200.pt.tmp-4242").exists()
    assert (tmp_path / "notes.txt").exists()


def test_load_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a mamba-asr training checkpoint"):
        load_checkpoint(other)


class Payload:
    """A class: unpickling it would mean importing and running code of the file's choosing."""


def test_files_with_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.CHECKPOINT_FORMAT, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_averaging_averages_floats_and_takes_integers_from_the_last(tmp_path):
    paths = [
        save_checkpoint(tmp_path / checkpoint_name(i), state(value, i))
        for i, value in enumerate([1.0, 2.0, 6.0], start=1)
    ]
    avg = average_checkpoints(paths)
    assert torch.allclose(avg["w"], torch.full((2, 3), 3.0))
    assert avg["h"].dtype == torch.bfloat16 and torch.equal(
        avg["h"], torch.full((2,), 3.0).bfloat16()
    )
    assert avg["n"].item() == 3 and avg["n"].dtype == torch.int64
    single = average_checkpoints(paths[:1])
    assert torch.equal(single["w"], torch.full((2, 3), 1.0))


def test_averaging_refuses_mismatched_checkpoints(tmp_path):
    a = save_checkpoint(tmp_path / "step-00000001.pt", state(1.0))
    bad = state(1.0)
    bad["model"]["w"] = torch.zeros(3, 3)
    b = save_checkpoint(tmp_path / "step-00000002.pt", bad)
    with pytest.raises(CheckpointError, match="w has shape"):
        average_checkpoints([a, b])
    extra = state(1.0)
    extra["model"]["extra"] = torch.zeros(1)
    c = save_checkpoint(tmp_path / "step-00000003.pt", extra)
    with pytest.raises(CheckpointError, match="differ"):
        average_checkpoints([a, c])
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])
