"""The bundled model exported with ``mamba-asr export onnx``: ``mamba-asr transcribe --onnx``
prints what PyTorch prints for examples/hello.flac, offline and streaming; the encoder chunks
equal PyTorch's within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mamba_asr
from mamba_asr.cli import main
from mamba_asr.export.onnx import onnx_state as export_state
from mamba_asr.pretrained import bundled_path
from mamba_asr.runtime.onnx import OnnxASR

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

AUDIO = Path(__file__).resolve().parents[2] / "examples" / "hello.flac"
pytestmark = [
    pytest.mark.slow,  # the export takes a minute or two on a small CPU
    pytest.mark.skipif(not bundled_path().is_file(), reason="bundled model file not built yet"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundled") / "onnx"
    assert main(["export", "onnx", "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize("extra", [[], ["--stream"], ["--strategy", "greedy", "--stream"]])
def test_transcribe_onnx_prints_what_pytorch_prints(exported, capsys, extra):
    args = ["transcribe", str(AUDIO), "--format", "json", *extra]
    assert main(args) == 0
    expected = capsys.readouterr().out
    assert main([*args, "--onnx", str(exported)]) == 0
    assert capsys.readouterr().out == expected
    assert "PLEASE CALL ME BACK" in expected


def test_encoder_chunks_equal_pytorch(exported):
    asr = mamba_asr.load_model(device="cpu")
    model = OnnxASR.load(exported).model
    feats = torch.randn(1, 96, 80)
    state, onnx_state = asr.model.init_state(1), model.init_state(1)
    for i in range(3):
        chunk = feats[:, 32 * i : 32 * (i + 1)]
        with torch.no_grad():
            memory, state = asr.model.forward_chunk(chunk, state)
        got, _, onnx_state = model.encode(chunk.numpy(), onnx_state)
        np.testing.assert_allclose(got, memory.numpy(), atol=1e-4, rtol=0)
        config = json.loads((exported / "config.json").read_text())
        for expected, new in zip(export_state(state, config), onnx_state, strict=True):
            np.testing.assert_allclose(new, expected, atol=1e-4, rtol=0)


def test_export_refuses_an_existing_out(exported, capsys):
    assert main(["export", "onnx", "--out", str(exported)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
