"""``mamba_asr.files``: UTF-8 reads that name the file, for every text file the package reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_asr.config import load_recipe
from mamba_asr.data import read_manifest, scan_librispeech
from mamba_asr.files import FolderInUseError, check_output, lock_folder, read_text
from mamba_asr.text.tokenizer import load_tokenizer

LATIN1 = "caf\xe9\n".encode("latin-1")  # 0xe9 alone is not UTF-8


def test_read_text_names_file_line_and_byte(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"fine\nalso fine\n" + LATIN1)
    with pytest.raises(ValueError) as info:
        read_text(path)
    assert str(info.value).startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at offset 18)")
    path.write_text("d\xe9j\xe0 vu\n", encoding="utf-8")
    assert read_text(path) == "d\xe9j\xe0 vu\n"


def _manifest(tmp_path: Path) -> tuple[object, Path]:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav", "text": "' + LATIN1.strip() + b'", "duration": 1}\n')
    return read_manifest, path


def _recipe(tmp_path: Path) -> tuple[object, Path]:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"# " + LATIN1 + b"model:\n  vocab_size: 6\n")
    return load_recipe, path


def _transcripts(tmp_path: Path) -> tuple[object, Path]:
    folder = tmp_path / "split" / "1" / "2"
    folder.mkdir(parents=True)
    path = folder / "1-2.trans.txt"
    path.write_bytes(b"1-2-0000 " + LATIN1)
    return lambda p: scan_librispeech(tmp_path / "split", progress=False), path


def _tokenizer(tmp_path: Path) -> tuple[object, Path]:
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    path.write_bytes(b'{"kind": "char", "alphabet": "' + LATIN1.strip() + b'"}\n')
    return lambda p: load_tokenizer(p.parent), path


@pytest.mark.parametrize("make", [_manifest, _recipe, _transcripts, _tokenizer])
def test_every_reader_names_the_file_that_is_not_utf8(tmp_path, make):
    reader, path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        reader(path)
    message = str(info.value)
    assert f"{path}:" in message and "not UTF-8 text" in message and "\n" not in message


def test_check_output_refuses_inputs_results_and_unusable_places(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x")
    (tmp_path / "link.txt").symlink_to(src)
    with pytest.raises(ValueError, match="is an input"):
        check_output(tmp_path / "link.txt", "--out", [src], overwrite=True)
    with pytest.raises(FileExistsError, match=r"--out .*in.txt: already exists; --overwrite"):
        check_output(src, "--out")
    assert check_output(src, "--out", overwrite=True) == src
    with pytest.raises(NotADirectoryError, match="in.txt is not a folder"):
        check_output(src / "deeper" / "out.txt", "--out")
    assert check_output(tmp_path / "new" / "deeper" / "out.txt", "--out").name == "out.txt"
    assert not (tmp_path / "new").exists()  # nothing created
    folder = tmp_path / "tok"
    folder.mkdir()
    assert check_output(folder, "--out", folder=True) == folder  # empty: nothing to lose
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(FileExistsError):
        check_output(folder, "--out", folder=True)
    with pytest.raises(ValueError, match="is a folder; give a file"):
        check_output(folder, "--out", overwrite=True)
    with pytest.raises(ValueError, match="is not a folder; give a folder"):
        check_output(src, "--out", overwrite=True, folder=True)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_lock_is_held_once_and_released(tmp_path):
    folder = tmp_path / "run"
    lock = lock_folder(folder, "train.lock")
    holder = json.loads((folder / "train.lock").read_text())
    assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(FolderInUseError) as info:
        lock_folder(folder, "train.lock")
    message = str(info.value)
    assert f"in use by process {os.getpid()} on {socket.gethostname()}" in message
    assert "\n" not in message
    lock.release()
    assert not folder.exists()  # it made the folder, and left it empty


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    pid = dead_pid()
    (folder / "train.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    lock = lock_folder(folder, "train.lock")
    assert json.loads((folder / "train.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {pid} on this host" in caplog.text
    lock.release()
    assert folder.is_dir() and not any(folder.iterdir())  # not made by it: kept


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / "train.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(FolderInUseError, match="in use by process 1 on elsewhere"):
        lock_folder(tmp_path, "train.lock")
