"""ONNX export of the research models' encoders (CTC, seq2seq): dynamic batch and length, and a
padded batch gives each utterance's own outputs, as PyTorch does.

One tiny seq2seq model with the ConMamba encoder (``helpers.recipes.tiny_recipe``; BiMamba:
each utterance reversed within its own length, the selective scan as an ONNX ``Scan``),
exported once: an export takes tens of seconds. A CTC model goes through the same
``ResearchEncoder`` (front end, encoder, CTC head). ``MAMBA_ASR_ONNX_ALL_ENCODERS=1`` adds CTC
models with each encoder (conmamba, conformer, transformer): about a minute each.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers.recipes import tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.export.onnx import ResearchEncoder, export_encoder_onnx
from mamba_asr.text.tokenizer import CharTokenizer

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CASES = [("seq2seq", "conmamba")]
if os.environ.get("MAMBA_ASR_ONNX_ALL_ENCODERS") == "1":
    CASES += [("ctc", "conmamba"), ("ctc", "conformer"), ("ctc", "transformer")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def exported(request, tmp_path_factory):
    kind, encoder = request.param
    torch.manual_seed(0)
    recipe = tiny_recipe(kind, f"model.encoder_module={encoder}")
    asr = ASR.from_recipe(recipe, CharTokenizer("AB ")).eval()
    path = export_encoder_onnx(asr, tmp_path_factory.mktemp("onnx") / f"{kind}.onnx")
    return asr, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("lengths", [[101, 77, 30, 9], [57, 40], [33]])
def test_a_padded_batch_gives_each_utterance_its_own_outputs(exported, lengths):
    asr, session = exported
    feats = torch.randn(len(lengths), max(lengths), 80)
    memory, out_lengths, log_probs = session.run(
        None, {"feats": feats.numpy(), "feat_lengths": np.array(lengths, dtype=np.int64)}
    )
    for i, n in enumerate(lengths):
        with torch.no_grad():
            mem, lens, lp = ResearchEncoder(asr.model)(feats[i : i + 1, :n], torch.tensor([n]))
        t = int(lens[0])
        assert int(out_lengths[i]) == t
        np.testing.assert_allclose(memory[i, :t], mem[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(log_probs[i, :t], lp[0].numpy(), atol=1e-4, rtol=0)


def test_a_transducer_or_an_existing_path_is_refused(exported, tmp_path):
    asr, _ = exported
    transducer = ASR.from_recipe(tiny_recipe("transducer"), CharTokenizer("AB "))
    with pytest.raises(ValueError, match="ctc or seq2seq model, this one is transducer"):
        export_encoder_onnx(transducer, tmp_path / "t.onnx")
    (tmp_path / "x.onnx").write_text("kept")
    with pytest.raises(FileExistsError, match="already exists"):
        export_encoder_onnx(asr, tmp_path / "x.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]
    assert (tmp_path / "x.onnx").read_text() == "kept"
