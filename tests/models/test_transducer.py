"""Tests for the streaming Mamba transducer: encoder streaming, padding, predictor state, loss,
gradients, recipes and a few training steps through the trainer."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.recipes import tiny_recipe, tiny_transducer_config
from helpers.tones import write_corpus
from mamba_asr.config import ConfigError, ModelConfig, load_recipe
from mamba_asr.models.factory import build_model, count_parameters
from mamba_asr.models.seq2seq import Encoded
from mamba_asr.models.transducer import (
    Joiner,
    LSTMPredictor,
    MambaEncoder,
    StatelessPredictor,
    TransducerModel,
    TransducerState,
)
from mamba_asr.modules.causal_frontend import CausalConvFrontEnd

ROOT = Path(__file__).resolve().parents[2]
N_MELS, VOCAB = 20, 7


def tiny_config(**overrides: object) -> ModelConfig:
    return tiny_transducer_config(VOCAB, N_MELS, **overrides)


def tiny_model(seed: int = 0, **overrides: object) -> TransducerModel:
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides))
    assert isinstance(model, TransducerModel)
    return model.eval()


def batch(lengths: list[int], target_lengths: list[int]):
    feats = torch.randn(len(lengths), max(lengths), N_MELS)
    targets = torch.randint(1, VOCAB, (len(lengths), max(target_lengths)))
    return feats, torch.tensor(lengths), targets, torch.tensor(target_lengths)


def test_config_kind_and_build() -> None:
    cfg = tiny_config()
    assert cfg.kind == "transducer"
    model = tiny_model()
    assert isinstance(model.frontend, CausalConvFrontEnd)
    assert isinstance(model.encoder, MambaEncoder)
    assert isinstance(model.predictor, StatelessPredictor)
    assert isinstance(model.joiner, Joiner)
    assert model.blank == 0 and model.vocab_size == VOCAB
    lstm = tiny_model(transducer={"predictor": "lstm", "aux_ctc_weight": 0.0})
    assert isinstance(lstm.predictor, LSTMPredictor) and lstm.ctc_lin is None


def test_config_errors_name_keys() -> None:
    with pytest.raises(ConfigError, match="model.frontend.channels must have 3 entries"):
        tiny_config(frontend={"subsampling": 8})
    with pytest.raises(ConfigError, match=r"frontend.subsampling must be one of 4 \| 8"):
        tiny_config(frontend={"subsampling": 2})
    with pytest.raises(ConfigError, match="frontend.kind must be one of 'conv2d'"):
        tiny_config(frontend={"kind": "causal2d"})
    with pytest.raises(ConfigError, match="transducer.predictor must be one of"):
        tiny_config(transducer={"predictor": "gru"})
    with pytest.raises(ConfigError, match=r"model.transducer.aux_ctc_weight must be in \[0, 1\)"):
        tiny_config(transducer={"aux_ctc_weight": 1.0})
    with pytest.raises(ConfigError, match="model.transducer.context_size must be >= 1"):
        tiny_config(transducer={"context_size": 0})
    with pytest.raises(ConfigError, match="unknown key 'transducer.joint_dim'"):
        tiny_config(transducer={"joint_dim": 3})
    small = ROOT / "hparams/Transducer/mct_small.yaml"
    with pytest.raises(ConfigError, match="mct_small.yaml: model.transducer.predictor must be"):
        load_recipe(small, ["model.transducer.predictor=gru"])
    with pytest.raises(ConfigError, match="model.frontend.channels must have 2 entries"):
        load_recipe(small, ["model.frontend.subsampling=4"])


def test_encode_shapes() -> None:
    model = tiny_model()
    feats, lengths, _, _ = batch([30, 13], [1])
    enc = model.encode(feats, lengths)
    assert isinstance(enc, Encoded)
    assert enc.memory.shape == (2, 8, 16) and enc.lengths.tolist() == [8, 4]
    assert (enc.memory[1, 4:] == 0).all()
    out = model(feats, lengths)
    torch.testing.assert_close(out.memory, enc.memory)


@pytest.mark.parametrize("subsampling", [4, 8])
def test_forward_chunk_equals_encode(subsampling: int) -> None:
    channels = [8] * (2 if subsampling == 4 else 3)
    model = tiny_model(frontend={"subsampling": subsampling, "channels": channels})
    rng = random.Random(subsampling)
    for _ in range(3):
        frames = rng.randint(5, 90)
        feats = torch.randn(2, frames, N_MELS)
        full = model.encode(feats, torch.tensor([frames, frames])).memory
        state = model.init_state(2)
        assert isinstance(state, TransducerState)
        outs, start = [], 0
        while start < frames:
            size = subsampling * rng.randint(1, 4)
            y, state = model.forward_chunk(feats[:, start : start + size], state)
            outs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_non_streaming_parts_say_so() -> None:
    model = tiny_model(frontend={"kind": "conv2d", "channels": [4, 4]})
    feats, lengths, targets, target_lengths = batch([30, 13], [3, 2])
    assert model.encode(feats, lengths).memory.shape == (2, 8, 16)  # offline use works
    assert torch.isfinite(model.loss(feats, lengths, targets, target_lengths).loss)
    with pytest.raises(TypeError, match="frontend .*ConvFrontEnd.* does not stream"):
        model.init_state(2)


def test_padded_batch_equals_each_alone() -> None:
    model = tiny_model()
    lengths, target_lengths = [37, 22, 9], [5, 3, 2]
    feats, feat_lengths, targets, target_lens = batch(lengths, target_lengths)
    targets[1, 3:] = 0  # padding may hold anything valid (blank) ...
    targets[2, 2:] = 5  # ... or real ids
    enc = model.encode(feats, feat_lengths)
    per_utt = model.loss(feats, feat_lengths, targets, target_lens, reduction="none")
    assert per_utt.loss.shape == (3,) and per_utt.ctc.shape == (3,)
    for i, (n, s) in enumerate(zip(lengths, target_lengths, strict=True)):
        alone = model.encode(feats[i : i + 1, :n], feat_lengths[i : i + 1])
        t = int(alone.lengths[0])
        torch.testing.assert_close(enc.memory[i, :t], alone.memory[0], atol=1e-5, rtol=1e-5)
        loss = model.loss(feats[i : i + 1, :n], feat_lengths[i : i + 1], targets[i : i + 1, :s],
                          target_lens[i : i + 1], reduction="none")  # fmt: skip
        torch.testing.assert_close(per_utt.loss[i], loss.loss[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(per_utt.ctc[i], loss.ctc[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["stateless", "lstm"])
def test_predictor_streaming_equals_full(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "lstm":
        predictor = LSTMPredictor(VOCAB, 12)
    else:
        predictor = StatelessPredictor(VOCAB, 12, context_size=3)
    tokens = torch.randint(0, VOCAB, (3, 9))
    full, _ = predictor(tokens)
    state = predictor.init_state(3)
    if kind == "stateless":
        assert state.shape == (3, 2) and (state == 0).all()
    steps = []
    for u in range(tokens.shape[1]):
        out, state = predictor(tokens[:, u : u + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    if kind == "stateless":
        assert torch.equal(state, tokens[:, -2:])


def test_joiner_projections_and_broadcast() -> None:
    torch.manual_seed(0)
    joiner = Joiner(16, 12, 10, VOCAB)
    enc, pred = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    logits = joiner(enc[:, :, None], pred[:, None])
    assert logits.shape == (2, 5, 3, VOCAB)
    e, p = joiner.project_encoder(enc), joiner.project_predictor(pred)
    assert e.shape == (2, 5, 10) and p.shape == (2, 3, 10)
    torch.testing.assert_close(joiner.join(e[:, 1], p[:, 2]), logits[:, 1, 2])


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_loss_reductions(reduction: str) -> None:
    model = tiny_model()
    feats, lengths, targets, target_lengths = batch([30, 20], [4, 2])
    none = model.loss(feats, lengths, targets, target_lengths, reduction="none")
    out = model.loss(feats, lengths, targets, target_lengths, reduction=reduction)
    assert out.attention is None
    expected = {
        "batchmean": none.loss.sum() / 2, "sum": none.loss.sum(),
        "mean": (none.loss / target_lengths).mean(), "none": none.loss,
    }[reduction]  # fmt: skip
    torch.testing.assert_close(out.loss, expected)
    no_ctc = tiny_model(transducer={"aux_ctc_weight": 0.0})
    out = no_ctc.loss(feats, lengths, targets, target_lengths, reduction=reduction)
    assert out.ctc is None and torch.isfinite(out.loss).all()


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_gradients_reach_every_parameter_and_loss_decreases(predictor: str) -> None:
    model = tiny_model(transducer={"predictor": predictor}).train()
    feats, lengths, targets, target_lengths = batch([40, 32, 24], [5, 4, 3])
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        optim.zero_grad()
        loss = model.loss(feats, lengths, targets, target_lengths).loss
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters()
                       if p.grad is None or not p.grad.abs().sum() > 0]  # fmt: skip
            assert not missing, f"no gradient for {missing}"
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(
    ("recipe", "low", "high"),
    [("hparams/Transducer/mct_small.yaml", 10e6, 15e6),
     ("hparams/Transducer/mct_base.yaml", 30e6, 40e6)],
)  # fmt: skip
def test_recipes_build(recipe: str, low: float, high: float) -> None:
    cfg = load_recipe(ROOT / recipe).model
    assert cfg.kind == "transducer" and cfg.frontend.kind == "causal"
    model = build_model(cfg, device="meta")
    assert isinstance(model, TransducerModel)
    assert low <= count_parameters(model) <= high


def test_model_info_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mamba_asr", "model-info", "hparams/Transducer/mct_small.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "transducer model, mamba encoder, vocabulary 256" in result.stdout
    assert "MambaEncoder" in result.stdout and "StatelessPredictor" in result.stdout


# --- a few steps through the trainer -----------------------------------------------------------


def test_train_smoke(tmp_path: Path) -> None:
    """Three optimizer steps of the small recipe (shrunk) with the trainer.

    The tiny corpus makes 4 batches an epoch, so 3 steps end before the first validation:
    this checks the training mechanics, not transducer decoding.
    """
    from mamba_asr.train import train

    manifest = write_corpus(tmp_path / "corpus")
    recipe = tiny_recipe("transducer")
    result = train(recipe, manifest, manifest, tmp_path / "run", device="cpu", max_steps=3,
                   progress=False)  # fmt: skip
    assert result.step == 3 and not result.finished
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 4  # header + one row per step


def test_train_one_epoch_with_validation(tmp_path: Path) -> None:
    """One whole epoch (4 steps), then validation with the registered transducer greedy search,
    checkpoint selection by WER and the final model file, which loads back."""
    from mamba_asr.asr import ASR
    from mamba_asr.train import train

    manifest = write_corpus(tmp_path / "corpus")
    recipe = tiny_recipe("transducer", "train.epochs=1", "train.keep_best=1", "train.average=1")
    result = train(recipe, manifest, manifest, tmp_path / "run", device="cpu", progress=False)
    assert result.finished and result.epochs_done == 1
    assert result.best_wer is not None and result.best_wer >= 0
    asr = ASR.load(result.model_path)
    assert isinstance(asr.model, TransducerModel)
