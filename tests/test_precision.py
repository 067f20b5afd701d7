"""Inference in fp16 and bf16 (``load_model(dtype=...)``, ``--dtype``): the bundled model's
transcripts match fp32's on spoken sentences, offline and streaming, and the model really runs
in the asked precision."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import mamba_asr
from mamba_asr.cli import main
from mamba_asr.decode import DecodingOptions
from mamba_asr.pretrained import bundled_path
from mamba_asr.text import error_rates
from mamba_asr.transcription import transcribe_waveform

pytestmark = pytest.mark.skipif(
    not bundled_path().is_file(), reason="bundled model file not built yet"
)
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello.flac"
SENTENCES = [  # voices and sentences of none of the reserved test sets
    ("en-us+m3", "the weather will be cold and windy tomorrow morning"),
    ("en-gb+f2", "please send the report to the office before noon"),
    ("en-us-nyc+m5", "we counted seven boats on the river last night"),
]


@pytest.fixture(scope="module")
def model():
    return mamba_asr.load_model(device="cpu")


@pytest.fixture(scope="module")
def waves(tmp_path_factory) -> list[np.ndarray]:
    """examples/hello.flac and, where espeak-ng is installed, three spoken sentences (16 kHz)."""
    out = [sf.read(HELLO, dtype="float32")[0]]
    if shutil.which("espeak-ng"):
        folder = tmp_path_factory.mktemp("speech")
        for i, (voice, text) in enumerate(SENTENCES):
            path = folder / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
            wave, rate = sf.read(path, dtype="float32")
            out.append(soxr.resample(wave, rate, 16000))
    return out


def texts(asr, waves, chunk_ms=None) -> list[str]:
    options = DecodingOptions(strategy="greedy")
    return [transcribe_waveform(asr, w, 16000, options, chunk_ms=chunk_ms).text for w in waves]


@pytest.fixture(scope="module")
def fp32_texts(model, waves) -> dict:
    return {None: texts(model, waves)}  # fp32


@pytest.mark.parametrize(("dtype", "chunk_ms"), [("fp16", None), ("bf16", None)],
                         ids=["fp16-offline", "bf16-offline"])  # fmt: skip
def test_half_precision_transcripts_match_fp32(model, waves, fp32_texts, dtype, chunk_ms):
    """fp16 (10-bit mantissa): the same words; bf16 (7 bits) moves close calls, e.g. "NOON" /
    "KNOWN" in a sentence here: at most 5% of the words differ. (Offline, a streaming model
    runs the streaming path in one chunk; 320 ms chunks in half precision: the next test.)"""
    try:
        got = texts(model.set_precision(dtype), waves, chunk_ms)
    finally:
        model.set_precision(None)
    expected = fp32_texts[chunk_ms]
    assert "PLEASE CALL ME BACK" in expected[0]
    if dtype == "fp16":
        assert got == expected
    else:
        assert error_rates(expected, got).wer <= 0.05, (got, expected)


@pytest.mark.parametrize(
    ("dtype", "expected", "chunk_ms"),
    [("fp32", torch.float32, None), ("fp32", torch.float32, 320), ("bf16", torch.bfloat16, None),
     ("bf16", torch.bfloat16, 320), ("fp16", torch.float16, None)],
)  # fmt: skip
def test_the_model_runs_in_the_precision_asked(model, waves, dtype, expected, chunk_ms):
    """Every Linear of the model computes in the asked dtype, offline and streaming (fp16 on
    a CPU streams too slowly for a test: offline only)."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
             for m in model.model.modules() if isinstance(m, torch.nn.Linear)]  # fmt: skip
    try:
        model.set_precision(dtype)
        greedy = DecodingOptions(strategy="greedy")
        text = transcribe_waveform(model, waves[0], 16000, greedy, chunk_ms=chunk_ms).text
        assert seen == {expected}, seen
        assert "PLEASE CALL ME BACK" in text
    finally:
        for h in hooks:
            h.remove()
        model.set_precision(None)


def test_bad_precision_is_a_one_line_error(model, capsys):
    with pytest.raises(ValueError, match="allowed"):
        model.set_precision("int3")
    assert main(["transcribe", str(HELLO), "--dtype", "bf16", "--backend", "mlx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype applies to PyTorch models only" in err[0]
