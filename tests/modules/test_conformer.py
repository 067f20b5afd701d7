"""Tests for the encoder layers and the convolution module: padding, causality, layout, grads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mamba_asr.modules.conformer import (
    ConformerLayer,
    ConMambaLayer,
    ConvolutionModule,
    TransformerEncoderLayer,
)
from mamba_asr.modules.mamba import BiMamba, Mamba
from mamba_asr.modules.positional import RelativePositionalEncoding

D_MODEL = 32
MAMBA = {"d_state": 8, "expand": 2, "d_conv": 4}


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial affine norms and BatchNorm running statistics, so the tests see them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "conv": lambda: ConvolutionModule(D_MODEL, kernel_size=7),
    "conv_batchnorm": lambda: ConvolutionModule(D_MODEL, kernel_size=7, norm="batchnorm"),
    "conv_causal": lambda: ConvolutionModule(D_MODEL, kernel_size=4, causal=True),
    "conformer": lambda: ConformerLayer(D_MODEL, 4, 64, kernel_size=7),
    "conformer_causal": lambda: ConformerLayer(D_MODEL, 4, 64, kernel_size=7, causal=True),
    "conmamba": lambda: ConMambaLayer(D_MODEL, 64, kernel_size=7, mamba=MAMBA),
    "conmamba_unidirectional": lambda: ConMambaLayer(
        D_MODEL, 64, kernel_size=7, mamba={**MAMBA, "bidirectional": False}
    ),
    "conmamba_causal": lambda: ConMambaLayer(D_MODEL, 64, kernel_size=4, mamba=MAMBA, causal=True),
    "transformer": lambda: TransformerEncoderLayer(D_MODEL, 4, 64),
    "transformer_post_norm": lambda: TransformerEncoderLayer(
        D_MODEL, 4, 64, normalize_before=False
    ),
}
CAUSAL = ["conv_causal", "conformer_causal", "conmamba_causal"]
# a causal scan but a centred conv module (kernel 7): 3 frames of look-ahead, as in Mamba-ASR
LOOK_AHEAD_3 = ["conv", "conv_batchnorm", "conmamba_unidirectional"]


def make(name: str) -> nn.Module:
    return randomize_norms(BUILDERS[name]())


def call(model: nn.Module, x: Tensor, lengths: Tensor | None = None) -> Tensor:
    if isinstance(model, ConformerLayer):
        return model(x, lengths, RelativePositionalEncoding(x.shape[-1])(x))
    return model(x, lengths)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_padded_batch_equals_each_alone(name: str) -> None:
    model = make(name)
    lengths = torch.tensor([19, 6, 12, 1])
    length = int(lengths.max())
    valid = torch.arange(length)[None, :] < lengths[:, None]
    x = torch.randn(len(lengths), length, D_MODEL)
    x = torch.where(valid[..., None], x, 1e3 * torch.randn_like(x)).requires_grad_()
    weights = torch.randn(len(lengths), length, D_MODEL)

    y = call(model, x, lengths)
    (y * weights).sum().backward()
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    for b, n in enumerate(lengths.tolist()):
        alone = x[b : b + 1, :n].detach().clone().requires_grad_()
        y_alone = call(model, alone)
        (y_alone * weights[b : b + 1, :n]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, :n], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x.grad[b : b + 1, :n], alone.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_causality(name: str) -> None:
    model = make(name)
    x = torch.randn(2, 16, D_MODEL)
    x2 = x.clone()
    x2[:, 9] += torch.randn(2, D_MODEL)
    with torch.no_grad():
        y, y2 = call(model, x), call(model, x2)
    past = (y[:, :9] - y2[:, :9]).abs().amax(dim=(0, 2))  # (9,)
    assert (y[:, 9:] - y2[:, 9:]).abs().max() > 1e-3
    if name in CAUSAL:
        assert past.max() < 1e-6
    elif name in LOOK_AHEAD_3:  # the kernel reaches 3 frames back
        assert past[:6].max() < 1e-6 and past[6:].min() > 1e-6
    else:  # attention / the backward scan: every earlier frame sees the change
        assert past.min() > 1e-6


def test_conv_module_layout() -> None:
    """SpeechBrain's layout: LN, pointwise 2M (bias), depthwise K (bias), LN, pointwise M (bias)."""
    d, k = 256, 31
    module = ConvolutionModule(d, k, device="meta")
    expected = 2 * d + (2 * d * d + 2 * d) + (d * k + d) + 2 * d + (d * d + d)
    assert sum(p.numel() for p in module.parameters()) == expected == 206_592
    no_bias = ConvolutionModule(d, k, bias=False, device="meta")
    assert sum(p.numel() for p in no_bias.parameters()) == expected - 4 * d


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (lambda: ConformerLayer(256, 4, 1024, device="meta"), 1_588_224),
        (lambda: ConMambaLayer(256, 1024, device="meta"), 1_742_080),
        (lambda: TransformerEncoderLayer(256, 4, 1024, device="meta"), 789_760),
    ],
)
def test_layer_parameter_counts(builder: Callable[[], nn.Module], expected: int) -> None:
    """CTC-large sizes (d_model 256, d_ffn 1024, 4 heads, kernel 31, d_state 16, expand 2)."""
    assert sum(p.numel() for p in builder().parameters()) == expected


def test_conmamba_mamba_choice_and_options() -> None:
    options = {"d_state": 4, "expand": 1, "d_conv": 3, "bidirectional": False}
    layer = ConMambaLayer(16, 32, kernel_size=3, mamba=options)
    assert type(layer.mamba) is Mamba and layer.mamba.d_state == 4 and layer.mamba.d_conv == 3
    assert options["bidirectional"] is False  # the caller's dict is left alone
    assert type(ConMambaLayer(16, 32, kernel_size=3).mamba) is BiMamba
    assert type(ConMambaLayer(16, 32, kernel_size=3, causal=True).mamba) is Mamba
    assert ConMambaLayer(16, 32, kernel_size=3).mamba.d_state == 16  # the defaults


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"norm": "rms"}, "norm"),
    ],
)
def test_conv_module_bad_options_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        ConvolutionModule(16, **kwargs)


def test_dtype_and_device_reach_parameters() -> None:
    layer = ConMambaLayer(16, 32, kernel_size=3, dtype=torch.float64)
    for name, param in layer.named_parameters():
        expected = torch.float32 if name.endswith(("A_log", "D")) else torch.float64
        assert param.dtype == expected, name
    layer = ConformerLayer(16, 2, 32, kernel_size=3, device="meta")
    assert all(p.device.type == "meta" for p in layer.parameters())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = make(name).train()
    for module in model.modules():  # dropout is 0 by default; keep BatchNorm in batch mode
        assert not isinstance(module, nn.Dropout) or module.p == 0
    x = torch.randn(2, 10, D_MODEL)
    y = call(model, x, torch.tensor([10, 6]))
    (y * torch.randn_like(y)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", list(BUILDERS))
def test_runs_on_meta(name: str) -> None:
    model = make(name).to("meta")
    x = torch.randn(2, 9, D_MODEL, device="meta")
    y = call(model, x, torch.tensor([9, 4], device="meta"))
    assert y.device.type == "meta" and y.shape == x.shape
