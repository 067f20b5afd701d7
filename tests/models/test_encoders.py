"""Tests for the encoders: padding, causality, sizes of the published models, MPS safety."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamba_asr.models.encoders import (
    ENCODERS,
    ConformerEncoder,
    ConMambaEncoder,
    MambaEncoder,
    TransformerEncoder,
)
from mamba_asr.modules.frontend import ConvFrontEnd

D_MODEL = 32
SMALL = {
    "d_model": D_MODEL,
    "num_layers": 2,
    "nhead": 4,
    "d_ffn": 64,
    "kernel_size": 5,
    "dropout": 0.1,
    "mamba": {"d_state": 8, "expand": 2, "d_conv": 4, "bidirectional": True},
}


# the research encoders share one signature; the causal Mamba encoder of the transducer has its
# own (tests/models/test_transducer.py)
RESEARCH = [name for name in ENCODERS if name != "mamba"]


def make(name: str, **kwargs: object) -> nn.Module:
    model = ENCODERS[name](**{**SMALL, **kwargs})
    with torch.no_grad():  # non-trivial LayerNorm affines
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_and_shared_signature() -> None:
    registry = dict(ENCODERS)
    assert registry == {
        "conformer": ConformerEncoder,
        "conmamba": ConMambaEncoder,
        "transformer": TransformerEncoder,
        "mamba": MambaEncoder,
    }
    x = torch.randn(2, 9, D_MODEL)
    for name in RESEARCH:  # one set of options fits every research encoder
        y = make(name)(x, torch.tensor([9, 4]))
        assert y.shape == x.shape and torch.isfinite(y).all(), name


@pytest.mark.parametrize("name", RESEARCH)
def test_padded_batch_equals_each_alone(name: str) -> None:
    model = make(name)
    lengths = torch.tensor([17, 5, 11, 1])
    length = int(lengths.max())
    valid = torch.arange(length)[None, :] < lengths[:, None]
    x = torch.randn(len(lengths), length, D_MODEL)
    garbage = 1e3 * torch.randn_like(x)
    garbage[1, -1, 0] = float("nan")
    x = torch.where(valid[..., None], x, garbage).requires_grad_()
    weights = torch.randn(len(lengths), length, D_MODEL)

    y = model(x, lengths)
    (y * weights).sum().backward()
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    for b, n in enumerate(lengths.tolist()):
        alone = x[b : b + 1, :n].detach().clone().requires_grad_()
        y_alone = model(alone)
        (y_alone * weights[b : b + 1, :n]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, :n], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x.grad[b : b + 1, :n], alone.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", RESEARCH)
@pytest.mark.parametrize("causal", [False, True])
def test_causality(name: str, causal: bool) -> None:
    model = make(name, causal=causal)
    x = torch.randn(2, 14, D_MODEL)
    x2 = x.clone()
    x2[:, 8] += torch.randn(2, D_MODEL)
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    past = (y[:, :8] - y2[:, :8]).abs().amax(dim=(0, 2))
    assert (y[:, 8:] - y2[:, 8:]).abs().max() > 1e-3
    if causal:
        assert past.max() < 1e-6
    else:
        assert past.min() > 1e-6


def test_zero_length_utterance() -> None:
    for name in RESEARCH:
        y = make(name)(torch.randn(2, 6, D_MODEL), torch.tensor([6, 0]))
        assert torch.isfinite(y).all() and torch.equal(y[1], torch.zeros_like(y[1])), name


def test_dropout_is_active_in_training_only() -> None:
    model = make("conformer")
    x = torch.randn(2, 8, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert (model(x) - model(x)).abs().max() > 1e-4


# --- sizes of the published models (CTC large: 28.8 M Conformer, 31.6 M ConMamba) -----------

CTC_LARGE = {"d_model": 256, "num_layers": 18, "nhead": 4, "d_ffn": 1024, "kernel_size": 31}
CTC_HEAD = 256 * 31 + 31  # Linear(256 -> 31 characters)


@pytest.mark.parametrize(
    ("name", "encoder_params", "published"),
    [("conformer", 28_588_544, 28.8e6), ("conmamba", 31_357_952, 31.6e6)],
)
def test_ctc_large_parameter_counts(name: str, encoder_params: int, published: float) -> None:
    encoder = ENCODERS[name](**CTC_LARGE, device="meta")
    frontend = ConvFrontEnd(80, 256, device="meta")
    assert n_params(encoder) == encoder_params
    total = n_params(frontend) + encoder_params + CTC_HEAD
    assert abs(total / published - 1) < 0.01, total


def test_device_and_dtype_reach_every_tensor() -> None:
    for name in RESEARCH:
        model = ENCODERS[name](**SMALL, device="meta", dtype=torch.float16)
        for pname, tensor in [*model.named_parameters(), *model.named_buffers()]:
            assert tensor.device.type == "meta", (name, pname)
            keep_fp32 = pname.endswith(("A_log", ".D"))
            assert tensor.dtype == (torch.float32 if keep_fp32 else torch.float16), (name, pname)


@pytest.mark.parametrize("name", RESEARCH)
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = make(name, dropout=0.0)
    x = torch.randn(2, 10, D_MODEL)
    y = model(x, torch.tensor([10, 6]))
    (y * torch.randn_like(y)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, pname
