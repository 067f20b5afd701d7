"""Tests for the padding masks and ``shared_masks``: inside the block each mask is built once per
lengths tensor and length, outside (and under tracing) every call builds its own, and the encoders
give the same outputs and gradients either way."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamba_asr.models.encoders import ENCODERS
from mamba_asr.modules import masks
from mamba_asr.modules.masks import (
    key_padding_mask,
    length_mask,
    padded_frames,
    reverse_index,
    shared_masks,
    zero_padding,
)


class _Calls(TorchDispatchMode):
    """Counts the operator calls made while open, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_values() -> None:
    lengths = torch.tensor([3, 1, 0])
    mask = length_mask(lengths, 4, lengths.device)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(padded_frames(mask), ~mask)
    assert torch.equal(key_padding_mask(lengths, 4), ~mask)
    assert reverse_index(lengths, 4, lengths.device).tolist() == [
        [2, 1, 0, 3],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
    ]
    x = torch.ones(3, 4, 2)
    assert torch.equal(zero_padding(x, mask), mask[..., None].float().expand(3, 4, 2))
    assert zero_padding(x, None) is x


def test_built_once_inside_the_block_and_anew_outside() -> None:
    lengths = torch.tensor([5, 2])
    outside = length_mask(lengths, 5, "cpu"), length_mask(lengths, 5, "cpu")
    assert outside[0] is not outside[1]
    with shared_masks():
        first = length_mask(lengths, 5, lengths.device)
        assert length_mask(lengths, 5, torch.device("cpu")) is first
        assert reverse_index(lengths, 5, "cpu") is reverse_index(lengths, 5, "cpu")
        assert padded_frames(first) is padded_frames(first)
        assert key_padding_mask(lengths, 5) is padded_frames(first)
        assert length_mask(lengths, 6, "cpu") is not first  # another length: its own mask
        assert length_mask(lengths, 6, "cpu").shape == (2, 6)
        assert length_mask(lengths.clone(), 5, "cpu") is not first  # another tensor
        with shared_masks():  # nested: the outer block's
            assert length_mask(lengths, 5, "cpu") is first
    assert getattr(masks._SHARED, "cache", None) is None  # dropped on leaving
    assert length_mask(lengths, 5, "cpu") is not first


def test_lengths_changed_in_place_build_a_new_mask() -> None:
    lengths = torch.tensor([5, 2])
    with shared_masks():
        before = length_mask(lengths, 5, "cpu")
        lengths[1] = 4
        after = length_mask(lengths, 5, "cpu")
        assert after is not before
        assert after.tolist() == [[1] * 5, [1, 1, 1, 1, 0]]


def test_dropped_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), shared_masks():
        length_mask(torch.tensor([1]), 2, "cpu")
        raise RuntimeError("boom")
    assert getattr(masks._SHARED, "cache", None) is None


def test_nothing_shared_while_tracing() -> None:
    lengths = torch.tensor([3, 2])

    def both(lens: torch.Tensor) -> torch.Tensor:
        with shared_masks():
            a = length_mask(lens, 3, "cpu")
            b = length_mask(lens, 3, "cpu")
            return torch.stack([a, b]).float()

    traced = torch.jit.trace(both, (lengths,))
    assert traced(torch.tensor([1, 3])).tolist() == [[[1, 0, 0], [1, 1, 1]]] * 2
    assert getattr(masks._SHARED, "cache", None) is None


SMALL = {
    "d_model": 16,
    "num_layers": 3,
    "nhead": 2,
    "d_ffn": 32,
    "kernel_size": 5,
    "dropout": 0.0,
    "mamba": {"d_state": 4, "expand": 2, "d_conv": 4, "bidirectional": True},
}


@pytest.mark.parametrize("name", ["conformer", "conmamba", "transformer"])
def test_encoders_build_each_mask_once_with_the_same_result(name: str, monkeypatch) -> None:
    torch.manual_seed(0)
    model = ENCODERS[name](**SMALL)
    lengths = torch.tensor([9, 4, 7])
    x = torch.randn(3, 9, 16)
    built: list[str] = []
    for builder in ("_length_mask", "_reverse_index"):
        monkeypatch.setattr(masks, builder, _counted(getattr(masks, builder), built, builder))

    def run():
        built.clear()
        xr = x.clone().requires_grad_()
        with _Calls() as calls:
            y = model(xr, lengths)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y.detach(), xr.grad, sorted(built), calls.names.count("bitwise_not")

    y, grad, shared, nots = run()
    # a block that shares nothing: every layer builds its own masks
    monkeypatch.setattr("mamba_asr.models.encoders.shared_masks", contextlib.nullcontext)
    y_alone, grad_alone, alone, nots_alone = run()
    assert torch.equal(y, y_alone) and torch.equal(grad, grad_alone)
    # the stack's one length mask (and ConMamba's one reversal index) and one inverted mask,
    # against one or more of each a layer (attention inverts its merged masks in every layer)
    assert shared == ["_length_mask"] + (["_reverse_index"] if name == "conmamba" else [])
    assert alone.count("_length_mask") > SMALL["num_layers"]
    assert nots_alone - nots >= SMALL["num_layers"]
    if name == "conmamba":
        assert nots == 1
        assert alone.count("_reverse_index") == SMALL["num_layers"]


def _counted(fn, log: list[str], name: str):
    def wrapper(*args, **kwargs):
        log.append(name)
        return fn(*args, **kwargs)

    return wrapper
