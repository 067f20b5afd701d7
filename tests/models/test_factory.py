"""Recipes build the published models: parameter counts within 3%, model-info prints them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers.recipes import tiny_recipe
from mamba_asr.config import load_recipe
from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.factory import build_model, count_parameters, layer_summary
from mamba_asr.models.seq2seq import Seq2SeqModel

# published parameter counts (millions), xi-j/Mamba-ASR
PUBLISHED = {
    "hparams/CTC/conformer_large.yaml": 28.8,
    "hparams/CTC/conmamba_large.yaml": 31.6,
    "hparams/S2S/conformer_large.yaml": 109.1,
    "hparams/S2S/conmamba_large.yaml": 115.2,
    "hparams/S2S/conmambamamba_large.yaml": 122.9,
    "hparams/S2S/conformer_small.yaml": 13.3,
    "hparams/S2S/conmamba_small.yaml": 14.1,
    "hparams/S2S/conmambamamba_small.yaml": 15.0,
}


@pytest.mark.parametrize("recipe", list(PUBLISHED))
def test_parameter_count_matches_published(recipe):
    cfg = load_recipe(recipe).model
    model = build_model(cfg, device="meta")
    millions = count_parameters(model) / 1e6
    assert abs(millions / PUBLISHED[recipe] - 1) <= 0.03, f"{recipe}: {millions:.2f} M"
    assert isinstance(model, CTCModel if "CTC" in recipe else Seq2SeqModel)
    rows = {r.name: r for r in layer_summary(model)}
    layers = cfg.num_encoder_layers
    layer_kind = "ConformerLayer" if cfg.encoder_module == "conformer" else "ConMambaLayer"
    assert rows["encoder.layers"].kind == f"{layers} x {layer_kind}"
    assert sum(r.parameters for n, r in rows.items() if "." not in n) == count_parameters(model)


@pytest.mark.parametrize("encoder", ["conformer", "conmamba", "transformer"])
@pytest.mark.parametrize(
    "decoder_layers, decoder", [(0, "transformer"), (1, "transformer"), (1, "mamba")]
)
def test_tiny_models_run_and_learn(encoder, decoder_layers, decoder):
    torch.manual_seed(0)
    cfg = tiny_recipe(
        "seq2seq", f"model.encoder_module={encoder}", f"model.decoder_module={decoder}",
        f"model.num_decoder_layers={decoder_layers}", "model.vocab_size=12",
        f"model.kind={'seq2seq' if decoder_layers else 'ctc'}",
    ).model  # fmt: skip
    model = build_model(cfg)
    feats = torch.randn(2, 40, 80)
    feat_lengths = torch.tensor([40, 31])
    targets = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    target_lengths = torch.tensor([4, 2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model.loss(feats, feat_lengths, targets, target_lengths).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_model_info_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_asr", "model-info", "hparams/CTC/conmamba_large.yaml"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "parameters: 31,5" in proc.stdout and "18 x ConMambaLayer" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mamba_asr", "model-info", "hparams/CTC/conmamba_large.yaml",
         "--set", "model.encoder_module=rnn"], capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "model.encoder_module" in bad.stderr
