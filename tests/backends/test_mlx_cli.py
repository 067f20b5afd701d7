"""``mamba-asr transcribe|eval --backend mlx`` and ``mamba-asr export mlx``: the PyTorch
path's outputs, the same formats; one error line without MLX."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.mlx_models import requires_mlx
from mamba_asr.cli import main
from mamba_asr.pretrained import bundled_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello.flac"
bundled = pytest.mark.skipif(not bundled_path().is_file(), reason="bundled model not built yet")


def _out(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


@requires_mlx
@bundled
@pytest.mark.parametrize("extra", [[], ["--stream", "--chunk-ms", "160"]], ids=["file", "stream"])
def test_transcribe_backend_mlx_prints_what_torch_prints(capsys, extra) -> None:
    args = ["transcribe", str(EXAMPLE), "--format", "json", "--strategy", "greedy", *extra]
    expected = _out(capsys, *args)
    got = _out(capsys, *args, "--backend", "mlx")
    assert got == expected and json.loads(got)["text"]


@requires_mlx
@bundled
def test_export_then_transcribe_and_eval_from_the_folder(capsys, tmp_path) -> None:
    folder = tmp_path / "mlx"
    assert _out(capsys, "export", "mlx", "--out", str(folder)).strip() == str(folder)
    assert (folder / "model.safetensors").is_file()
    assert main(["export", "mlx", "--out", str(folder)]) == 2  # exists: one error line
    assert "already exists" in capsys.readouterr().err
    text = _out(capsys, "transcribe", str(EXAMPLE), "--backend", "mlx", "--model", str(folder))
    assert text.strip() == EXAMPLE.with_suffix(".txt").read_text().strip()
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "audio": str(EXAMPLE), "text": text.strip(), "duration": 2.7}) + "\n"
    )
    out = _out(capsys, "eval", str(manifest), "--backend", "mlx", "--model", str(folder),
               "--hyps", str(tmp_path / "h.jsonl"), "--json")  # fmt: skip
    assert json.loads(out.splitlines()[-1])["wer"] == 0.0


def test_backend_mlx_without_mlx_is_one_error_line(capsys, monkeypatch) -> None:
    import mamba_asr.backends

    monkeypatch.setitem(sys.modules, "mamba_asr.backends.mlx", None)  # as if mlx were missing
    monkeypatch.delattr(mamba_asr.backends, "mlx", raising=False)
    assert main(["transcribe", str(EXAMPLE), "--backend", "mlx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mamba-asr[mlx]'" in err[0]
