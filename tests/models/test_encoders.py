"""Tests for the encoders: padding, causality, sizes of the published models, MPS safety."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mamba_asr.models.encoders import (
    ENCODERS,
    ConformerEncoder,
    ConMambaEncoder,
    TransformerEncoder,
)
from mamba_asr.modules.attention import MultiHeadAttention, RelPosMHAXL
from mamba_asr.modules.conformer import ConformerLayer, ConMambaLayer, ConvolutionModule
from mamba_asr.modules.frontend import ConvFrontEnd
from mamba_asr.modules.positional import RelativePositionalEncoding

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
    }
    x = torch.randn(2, 9, D_MODEL)
    for name in ENCODERS:  # one set of options fits every encoder
        y = make(name)(x, torch.tensor([9, 4]))
        assert y.shape == x.shape and torch.isfinite(y).all(), name


@pytest.mark.parametrize("name", list(ENCODERS))
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


@pytest.mark.parametrize("name", list(ENCODERS))
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
    for name in ENCODERS:
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
    for name in ENCODERS:
        model = ENCODERS[name](**SMALL, device="meta", dtype=torch.float16)
        for pname, tensor in [*model.named_parameters(), *model.named_buffers()]:
            assert tensor.device.type == "meta", (name, pname)
            keep_fp32 = pname.endswith(("A_log", ".D"))
            assert tensor.dtype == (torch.float32 if keep_fp32 else torch.float16), (name, pname)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = make(name, dropout=0.0)
    x = torch.randn(2, 10, D_MODEL)
    y = model(x, torch.tensor([10, 6]))
    (y * torch.randn_like(y)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, pname


# --- MPS safety: every new block on the meta device, and no float64 on the CPU ---------------

FORBIDDEN_DTYPES = {torch.float64, torch.complex64, torch.complex128, torch.complex32}


class RecordOutputs(TorchDispatchMode):
    """Records (op, device type, dtype) of every tensor an aten op returns, backward included."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.records.append((str(func), t.device.type, t.dtype))
        return out


def _relpos(device: str) -> Callable[[Tensor, Tensor], Tensor]:
    model = RelPosMHAXL(16, 2, dropout=0.1, device=device)
    return lambda x, lengths: model(
        x,
        RelativePositionalEncoding(16)(x),
        torch.arange(x.shape[1], device=device)[None, :] >= lengths[:, None],
    )


def _mha(device: str) -> Callable[[Tensor, Tensor], Tensor]:
    model = MultiHeadAttention(16, 2, dropout=0.1, device=device)
    return lambda x, lengths: model(x, x[:, :5], x[:, :5], attn_mask=None)


def _layer(device: str) -> Callable[[Tensor, Tensor], Tensor]:
    model = ConformerLayer(16, 2, 32, kernel_size=3, dropout=0.1, causal=True, device=device)
    return lambda x, lengths: model(x, lengths, RelativePositionalEncoding(16)(x))


def _frontend(device: str) -> Callable[[Tensor, Tensor], Tensor]:
    model = ConvFrontEnd(16, 16, channels=(4, 2), dropout=0.1, device=device)
    return lambda x, lengths: model(x, lengths)[0]


def _encoder(name: str, device: str) -> nn.Module:
    return ENCODERS[name](**{**SMALL, "d_model": 16}, device=device)


BLOCKS: dict[str, Callable[[str], Callable[[Tensor, Tensor], Tensor]]] = {
    "RelPosMHAXL": _relpos,
    "MultiHeadAttention": _mha,
    "ConvolutionModule": lambda device: ConvolutionModule(16, 3, device=device),
    "ConvolutionModule(batchnorm)": lambda device: ConvolutionModule(
        16, 3, norm="batchnorm", device=device
    ),
    "ConformerLayer": _layer,
    "ConMambaLayer": lambda device: ConMambaLayer(16, 32, 3, dropout=0.1, device=device),
    "ConvFrontEnd": _frontend,
    **{name: functools.partial(_encoder, name) for name in ENCODERS},
}


def run_block(name: str, device: str) -> Callable[[], None]:
    block = BLOCKS[name](device)
    if isinstance(block, nn.Module):
        block.train()
    x = torch.randn(2, 12, 16, device=device, requires_grad=True)
    lengths = torch.tensor([12, 7], device=device)

    def run() -> None:
        y = block(x, lengths)
        assert y.device.type == device and y.dtype == torch.float32
        y.sum().backward()
        assert x.grad is not None

    return run


@pytest.mark.parametrize("name", list(BLOCKS))
def test_runs_on_meta_without_stray_devices(name: str) -> None:
    run = run_block(name, "meta")
    with RecordOutputs() as mode:
        run()
    assert mode.records
    stray = sorted({op for op, dev, _ in mode.records if dev != "meta"})
    assert not stray, f"{name} created tensors off the input's device in: {stray}"


@pytest.mark.parametrize("name", list(BLOCKS))
def test_no_float64_or_complex_on_cpu(name: str) -> None:
    run = run_block(name, "cpu")
    with RecordOutputs() as mode:
        run()
    bad = sorted({f"{op} -> {dt}" for op, _, dt in mode.records if dt in FORBIDDEN_DTYPES})
    assert not bad, f"{name} produced dtypes MPS lacks: {bad}"
