"""Bundled models: ``resolve_model``, ``load_model()`` without arguments, and the CLI defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import mamba_asr
import mamba_asr.pretrained as pretrained
from helpers.recipes import tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.cli import main
from mamba_asr.evaluate import hypotheses_name
from mamba_asr.pretrained import DEFAULT_MODEL, MODELS, resolve_model
from mamba_asr.text import CharTokenizer


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> ASR:
    torch.manual_seed(0)
    return ASR.from_recipe(tiny_recipe("transducer"), CharTokenizer("AB "))


@pytest.fixture
def packaged(tmp_path, monkeypatch, tiny_bundle):
    """The package's model folder replaced by one holding the tiny bundle as the default."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    tiny_bundle.save(folder / MODELS[DEFAULT_MODEL])
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    return folder / MODELS[DEFAULT_MODEL]


@pytest.fixture
def empty_package(tmp_path, monkeypatch):
    """The package's model folder as installed without the model file."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "empty")


def test_registry():
    assert DEFAULT_MODEL == "mct-small-synth-en"
    assert MODELS[DEFAULT_MODEL] == "mct-small-synth-en.pt"
    assert pretrained.bundled_path().name == "mct-small-synth-en.pt"


def test_none_and_name_resolve_to_the_packaged_file(packaged):
    assert resolve_model() == packaged
    assert resolve_model(None) == packaged
    assert resolve_model(DEFAULT_MODEL) == packaged


def test_existing_path_is_taken_as_it_is(tmp_path, packaged):
    other = tmp_path / "mine.pt"
    other.write_bytes(packaged.read_bytes())
    assert resolve_model(other) == other
    assert resolve_model(str(other)) == other


def test_unknown_name_is_one_line(tmp_path):
    with pytest.raises(ValueError) as exc:
        resolve_model("mct-huge")
    message = str(exc.value)
    assert message == (
        "unknown model 'mct-huge': not a file and not a bundled model (bundled: mct-small-synth-en)"
    )
    with pytest.raises(ValueError, match="not a file"):
        resolve_model(tmp_path)  # a folder is not a model file


def test_missing_packaged_file_says_so(empty_package):
    for arg in (None, DEFAULT_MODEL):
        with pytest.raises(ValueError) as exc:
            resolve_model(arg)
        message = str(exc.value)
        assert "\n" not in message
        assert "installed without" in message and "mct-small-synth-en" in message


def test_load_model_without_arguments_uses_the_bundled_model(packaged, tiny_bundle, monkeypatch):
    seen = []
    real = pretrained.resolve_model
    monkeypatch.setattr(pretrained, "resolve_model", lambda x=None: seen.append(x) or real(x))
    model = mamba_asr.load_model(device="cpu")
    assert seen == [None]
    assert isinstance(model, ASR) and not model.training
    for key, value in tiny_bundle.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert isinstance(mamba_asr.load_model(DEFAULT_MODEL, device="cpu"), ASR)


def test_cli_without_a_bundled_file_is_one_error_line(empty_package, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    assert main(["transcribe", str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mamba-asr: error: bundled model")


def _test_set(folder) -> str:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        path = folder / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": str(path), "text": "A B", "duration": 1}))
    manifest = folder / "test.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def test_transcribe_and_eval_default_to_the_bundled_model(packaged, tmp_path, monkeypatch, capsys):
    manifest = _test_set(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["transcribe", str(tmp_path / "u0.wav"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == str(tmp_path / "u0.wav")
    assert main(["eval", manifest, "--strategy", "greedy", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["utterances"] == 2
    # hypotheses go to the current folder, not beside the installed model file
    name = hypotheses_name(manifest)
    assert (tmp_path / name).is_file()
    assert not (packaged.parent / name).exists()


@pytest.mark.parametrize("command", ["transcribe", "eval"])
def test_threads_option_sets_torch_threads(packaged, tmp_path, monkeypatch, capsys, command):
    manifest = _test_set(tmp_path)
    monkeypatch.chdir(tmp_path)
    target = manifest if command == "eval" else str(tmp_path / "u0.wav")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main([command, target, "--threads", "1", "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main([command, target, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
