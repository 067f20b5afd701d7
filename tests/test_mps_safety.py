"""MPS-safety rules checked without a Mac.

(a) Everything runs on the ``meta`` device: a tensor created inside an op or block without the
    input's device (``torch.zeros(n)``, ``torch.tensor(x)``) shows up as a CPU tensor, and a
    ``.item()``/host sync fails outright. Such code breaks or syncs on MPS.
(b) On the CPU with fp32 inputs, every op's output dtype is recorded: no float64 or complex may
    appear (MPS has neither).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mamba_asr.models.encoders import ENCODERS
from mamba_asr.modules.attention import MultiHeadAttention, RelPosMHAXL
from mamba_asr.modules.conformer import ConformerLayer, ConMambaLayer, ConvolutionModule
from mamba_asr.modules.frontend import ConvFrontEnd
from mamba_asr.modules.positional import RelativePositionalEncoding

FORBIDDEN_DTYPES = {torch.float64, torch.complex64, torch.complex128, torch.complex32}


def import_or_skip(name: str):
    """The module, or a skip saying it does not exist yet (a broken module still fails)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            pytest.skip(f"{name} does not exist yet")
        raise


class RecordOutputs(TorchDispatchMode):
    """Records (op, device type, dtype) of every tensor every aten op returns, backward included."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.records.append((str(func), t.device.type, t.dtype))
        return out

    def off_device(self, device_type: str) -> list[str]:
        return sorted({op for op, dev, _ in self.records if dev != device_type})

    def forbidden_dtypes(self) -> list[str]:
        return sorted({f"{op} -> {dt}" for op, _, dt in self.records if dt in FORBIDDEN_DTYPES})


def scan_backend() -> dict[str, str]:
    scan = import_or_skip("mamba_asr.ops.selective_scan")
    return {"backend": "chunked"} if "chunked" in scan.BACKENDS else {}


def scan_inputs(device: str, length: int = 70) -> dict[str, Tensor]:
    """Selective-scan inputs, fp32, random (meta tensors have no values), all requiring grad."""
    batch, dim, d_state = 2, 8, 4

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device).requires_grad_()

    return {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length),
        "A": (-torch.rand(dim, d_state, device=device)).requires_grad_(),
        "B": rand(batch, d_state, length),
        "C": rand(batch, d_state, length),
        "D": rand(dim),
        "z": rand(batch, dim, length),
        "delta_bias": rand(dim),
        "initial_state": rand(batch, dim, d_state),
    }


def run_scan(device: str) -> Callable[[], None]:
    scan = import_or_skip("mamba_asr.ops.selective_scan")
    options = scan_backend()
    inputs = scan_inputs(device)

    def run() -> None:
        out, last = scan.selective_scan_fn(
            **inputs, delta_softplus=True, return_last_state=True, **options
        )
        assert out.device.type == device and last.device.type == device
        (out.sum() + last.sum()).backward()
        for name, t in inputs.items():
            assert t.grad is not None, f"no gradient for {name}"

    return run


def run_block(cls_name: str, device: str, streaming: bool = False) -> Callable[[], None]:
    mamba = import_or_skip("mamba_asr.modules.mamba")
    block = getattr(mamba, cls_name)(16, device=device)
    for name, t in [*block.named_parameters(), *block.named_buffers()]:
        assert t.device.type == device, f"{cls_name}.{name} is on {t.device}, not {device}"
    x = torch.randn(2, 12, 16, device=device, requires_grad=True)
    lengths = torch.tensor([12, 7], device=device)

    def run() -> None:
        if streaming:
            state = block.init_state(2)
            ys = []
            for start, end in ((0, 5), (5, 12)):
                y, state = block.forward_chunk(x[:, start:end], state)
                ys.append(y)
            y = torch.cat(ys, dim=1)
        else:
            y = block(x, lengths)
        assert y.device.type == device and y.dtype == torch.float32
        y.sum().backward()
        assert x.grad is not None

    return run


# --- the research models' blocks: attention, conformer and conmamba layers, front end, encoders

SMALL = dict(num_layers=2, nhead=2, d_ffn=32, kernel_size=3, dropout=0.1)


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
    if name == "mamba":  # the transducer's causal encoder has its own signature
        mamba = {"d_state": 8, "expand": 2, "d_conv": 4}
        return ENCODERS[name](16, 2, 32, 0.1, "swish", mamba, device=device)
    return ENCODERS[name](**{**SMALL, "d_model": 16}, device=device)


MODEL_BLOCKS: dict[str, Callable[[str], Callable[[Tensor, Tensor], Tensor]]] = {
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


def run_model_block(name: str, device: str) -> Callable[[], None]:
    block = MODEL_BLOCKS[name](device)
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


CASES = {
    "selective_scan_fn": lambda device: run_scan(device),
    "Mamba": lambda device: run_block("Mamba", device),
    "Mamba.forward_chunk": lambda device: run_block("Mamba", device, streaming=True),
    "BiMamba": lambda device: run_block("BiMamba", device),
    **{name: functools.partial(run_model_block, name) for name in MODEL_BLOCKS},
}


@pytest.mark.parametrize("case", list(CASES))
def test_runs_on_meta_without_stray_devices(case):
    run = CASES[case]("meta")
    with RecordOutputs() as mode:
        run()
    assert mode.records, "nothing was recorded"
    stray = mode.off_device("meta")
    assert not stray, f"{case} created tensors off the input's device in: {stray}"


@pytest.mark.parametrize("case", list(CASES))
def test_no_float64_or_complex_on_cpu(case):
    run = CASES[case]("cpu")
    with RecordOutputs() as mode:
        run()
    assert mode.records, "nothing was recorded"
    bad = mode.forbidden_dtypes()
    assert not bad, f"{case} produced dtypes MPS lacks: {bad}"


def test_recorder_catches_what_it_should():
    """The checks above would fail on a stray CPU tensor, a float64 op or a complex op."""
    x = torch.randn(3, device="meta")
    with RecordOutputs() as mode:
        _ = x * torch.tensor(2.0)
    assert mode.off_device("meta")
    with RecordOutputs() as mode:
        _ = torch.randn(3).double().sum()
        _ = torch.fft.rfft(torch.randn(8))
    assert any("float64" in s for s in mode.forbidden_dtypes())
    assert any("complex64" in s for s in mode.forbidden_dtypes())
