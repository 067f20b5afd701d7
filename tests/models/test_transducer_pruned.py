"""The transducer's pruned RNN-T path: config, a training step, gradients, and the full-band case
against the full loss plus the scaled simple loss."""

from __future__ import annotations

import pytest
import torch

from helpers.recipes import tiny_recipe, tiny_transducer_config
from mamba_asr.config import ConfigError, ModelConfig
from mamba_asr.models.factory import build_model
from mamba_asr.models.transducer import TransducerModel
from mamba_asr.ops.pruned_rnnt import rnnt_loss_simple

N_MELS, VOCAB = 20, 9


def tiny_config(**transducer: object) -> ModelConfig:
    return tiny_transducer_config(VOCAB, N_MELS, transducer=transducer)


def tiny_model(rnnt_kind: str, seed: int = 0, **transducer: object) -> TransducerModel:
    """A tiny transducer with the given loss (built from the parts the factory makes)."""
    torch.manual_seed(seed)
    cfg = tiny_config(**transducer)
    base = build_model(cfg)
    t = cfg.transducer
    return TransducerModel(
        base.frontend, base.encoder, VOCAB, base.predictor, base.joiner, blank=0,
        aux_ctc_weight=t.aux_ctc_weight, d_model=cfg.d_model, rnnt_kind=rnnt_kind,
        prune_range=t.prune_range, simple_loss_scale=t.simple_loss_scale,
    )  # fmt: skip


def batch(lengths: list[int], target_lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), N_MELS, generator=gen)
    targets = torch.randint(1, VOCAB, (len(lengths), max(target_lengths)), generator=gen)
    return feats, torch.tensor(lengths), targets, torch.tensor(target_lengths)


def test_config_options() -> None:
    t = tiny_config().transducer
    assert (t.loss, t.prune_range, t.simple_loss_scale) == ("full", 5, 0.5)
    assert tiny_config(loss="pruned", prune_range=3).transducer.loss == "pruned"
    with pytest.raises(ConfigError, match="transducer.loss must be one of"):
        tiny_config(loss="fast")
    with pytest.raises(ConfigError, match="model.transducer.prune_range must be >= 2"):
        tiny_config(prune_range=1)
    with pytest.raises(ConfigError, match="model.transducer.simple_loss_scale must be >= 0"):
        tiny_config(simple_loss_scale=-0.1)
    with pytest.raises(ValueError, match="rnnt_kind must be"):
        tiny_model("fast")
    assert tiny_model("full").simple_am_proj is None


@pytest.mark.parametrize("rnnt_kind", ["full", "pruned"])
def test_training_step_reaches_every_parameter(rnnt_kind: str) -> None:
    model = tiny_model(rnnt_kind, prune_range=3).train()
    feats, lengths, targets, target_lengths = batch([40, 32, 24], [5, 4, 3])
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        optim.zero_grad()
        out = model.loss(feats, lengths, targets, target_lengths)
        assert torch.isfinite(out.loss) and out.loss > 0
        out.loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters()
                       if p.grad is None or not p.grad.abs().sum() > 0]  # fmt: skip
            assert not missing, f"no gradient for {missing}"
            if rnnt_kind == "pruned":
                assert {"simple_am_proj.weight", "simple_lm_proj.weight"} <= set(
                    dict(model.named_parameters())
                )
        optim.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0], losses


def test_full_band_equals_full_loss_plus_scaled_simple() -> None:
    """prune_range >= U + 1 keeps the whole lattice: pruned RNN-T = full + scale * simple."""
    pruned = tiny_model("pruned", prune_range=8, simple_loss_scale=0.3, aux_ctc_weight=0.0)
    full = TransducerModel(
        pruned.frontend, pruned.encoder, VOCAB, pruned.predictor, pruned.joiner, blank=0
    )
    feats, lengths, targets, target_lengths = batch([40, 29, 16], [6, 2, 0])
    got = pruned.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    ref = full.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    enc = pruned.encode(feats, lengths)
    pred_in = pruned.predictor_inputs(targets, target_lengths)
    pred, _ = pruned.predictor(pred_in)
    simple = rnnt_loss_simple(
        pruned.simple_lm_proj(pred), pruned.simple_am_proj(enc.memory), pred_in[:, 1:],
        enc.lengths, target_lengths, reduction="none",
    ).loss  # fmt: skip
    torch.testing.assert_close(got, ref + 0.3 * simple, rtol=1e-5, atol=1e-5)
    # and the gradients of the shared parameters agree
    grads = torch.autograd.grad(got.sum(), list(full.parameters()))
    grads_ref = torch.autograd.grad((ref + 0.3 * simple).sum(), list(full.parameters()))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_pruned_reductions_and_padding() -> None:
    model = tiny_model("pruned", prune_range=3)
    feats, lengths, targets, target_lengths = batch([40, 20], [5, 2])
    none = model.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    mean = model.loss(feats, lengths, targets, target_lengths, reduction="mean").loss
    torch.testing.assert_close(mean, (none / target_lengths).mean())
    alone = model.loss(feats[1:, :20], lengths[1:], targets[1:, :2], target_lengths[1:], "none")
    torch.testing.assert_close(none[1:], alone.loss, rtol=1e-5, atol=1e-5)


def test_recipe_loss_options_reach_the_model() -> None:
    """``model.transducer.loss: pruned`` in a recipe builds the pruned loss; the default is full."""
    pruned_cfg = tiny_recipe(
        "transducer", "model.transducer.loss=pruned", "model.transducer.prune_range=4",
        "model.transducer.simple_loss_scale=0.25",
    ).model  # fmt: skip
    torch.manual_seed(0)
    pruned = build_model(pruned_cfg).eval()
    assert (pruned.rnnt_kind, pruned.prune_range, pruned.simple_loss_scale) == ("pruned", 4, 0.25)
    assert pruned.simple_am_proj is not None and pruned.simple_lm_proj is not None

    full = build_model(tiny_recipe("transducer").model).eval()
    assert full.rnnt_kind == "full" and full.simple_am_proj is None
    missing, unexpected = full.load_state_dict(pruned.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("simple_") for k in unexpected)

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 160, 80, generator=gen)  # 8x subsampling: 20 encoder frames
    lengths, target_lengths = torch.tensor([160, 120]), torch.tensor([5, 3])
    targets = torch.randint(1, 6, (2, 5), generator=gen)
    with torch.no_grad():
        got = pruned.loss(feats, lengths, targets, target_lengths, reduction="none").loss
        ref = full.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    assert torch.isfinite(got).all() and torch.isfinite(ref).all()
    assert not torch.allclose(got, ref)


class _Scaled(torch.nn.Linear):
    """A linear layer that is not plain nn.Linear (as QAT's fake-quantized ones are not)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_pruned_loss_takes_the_fused_op_for_plain_linear_layers_only(monkeypatch) -> None:
    """The model's pruned loss goes through ``pruned_transducer_loss`` (one autograd node on the
    triton backend) when its five layers are plain nn.Linear, and through the layers themselves
    otherwise (their own forward counts: QAT's fake quantization)."""
    import mamba_asr.models.transducer as transducer

    calls = []
    fused = transducer.pruned_transducer_loss
    monkeypatch.setattr(transducer, "pruned_transducer_loss",
                        lambda *a, **k: calls.append(1) or fused(*a, **k))  # fmt: skip
    model = tiny_model("pruned", prune_range=3)
    feats, lengths, targets, target_lengths = batch([40, 20], [5, 2])
    plain = model.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    assert len(calls) == 1
    out = model.joiner.out
    scaled = _Scaled(out.in_features, out.out_features)
    scaled.load_state_dict(out.state_dict())
    model.joiner.out = scaled
    other = model.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    assert len(calls) == 1  # not taken: the layer's forward doubles the logits
    assert not torch.allclose(plain, other)
    model.joiner.out = out
    again = model.loss(feats, lengths, targets, target_lengths, reduction="none").loss
    torch.testing.assert_close(again, plain)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_pruned_loss_on_cuda_fused_equals_the_torch_backend(monkeypatch) -> None:
    """On CUDA the model's pruned loss (the fused triton node) against the same model on the
    torch backend: losses and every parameter's gradient."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_model("pruned", prune_range=3).cuda()
    feats, lengths, targets, target_lengths = (x.cuda() for x in batch([40, 31, 20], [5, 4, 2]))
    results = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("MAMBA_ASR_RNNT_BACKEND", backend)
        loss = model.loss(feats, lengths, targets, target_lengths, reduction="none").loss
        results[backend] = (loss, torch.autograd.grad(loss.sum(), list(model.parameters())))
    (got, d_got), (ref, d_ref) = results["triton"], results["torch"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(d_got, d_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
