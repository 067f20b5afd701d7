"""Tests for the convolutional front end: sizes, lengths, padding, layout, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mamba_asr.modules.frontend import ConvFrontEnd


def make(**kwargs: object) -> ConvFrontEnd:
    opts = {"n_mels": 20, "d_model": 24, "channels": (8, 4)}
    opts.update(kwargs)
    model = ConvFrontEnd(**opts).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model


def test_recipe_sizes_and_parameter_count() -> None:
    """80 mels -> 20 bins x 32 channels = 640 features -> d_model; SpeechBrain's layout."""
    model = ConvFrontEnd(80, 256, device="meta")
    assert model.out_features == 640
    expected = (
        (1 * 64 * 9 + 64) + 2 * 40 * 64  # conv 1 + LayerNorm over (40 bins, 64 channels)
        + (64 * 32 * 9 + 32) + 2 * 20 * 32  # conv 2 + LayerNorm over (20, 32)
        + (640 * 256 + 256)  # projection
    )  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == expected == 189_600
    x, lengths = model(torch.randn(2, 101, 80, device="meta"), torch.tensor([101, 50]))
    assert x.shape == (2, 26, 256) and x.device.type == "meta"


@pytest.mark.parametrize("stride", [2, 3])
def test_lengths_match_unpadded_runs(stride: int) -> None:
    model = make(stride=stride)
    for length in range(1, 24):
        with torch.no_grad():
            y, out_len = model(torch.randn(1, length, 20), torch.tensor([length]))
            y_none, out_none = model(torch.randn(1, length, 20))
        assert out_len.tolist() == [y.shape[1]] == out_none.tolist(), length
        assert model.output_lengths(torch.tensor([length])).tolist() == [y.shape[1]]
        if stride == 2:  # two stride-2 stages: ceil(ceil(T / 2) / 2)
            assert y.shape[1] == math.ceil(math.ceil(length / 2) / 2)


@pytest.mark.parametrize("stride", [2, 1])
def test_padded_batch_equals_each_alone(stride: int) -> None:
    """Odd and even lengths, garbage (NaN included) in the padding: outputs and input gradients
    on valid frames equal each utterance alone, padded output frames are zero."""
    model = make(stride=stride)
    lengths = torch.tensor([23, 8, 13, 1, 2])
    length = int(lengths.max())
    valid = torch.arange(length)[None, :] < lengths[:, None]
    x = torch.randn(len(lengths), length, 20)
    garbage = 1e3 * torch.randn_like(x)
    garbage[1, -1, 3] = float("nan")
    x = torch.where(valid[..., None], x, garbage).requires_grad_()

    y, out_lengths = model(x, lengths)
    assert out_lengths.tolist() == model.output_lengths(lengths).tolist()
    out_valid = torch.arange(y.shape[1])[None, :] < out_lengths[:, None]
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    assert torch.equal(y[~out_valid], torch.zeros_like(y[~out_valid]))
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    for b, n in enumerate(lengths.tolist()):
        alone = x[b : b + 1, :n].detach().clone().requires_grad_()
        y_alone, len_alone = model(alone)
        assert len_alone.tolist() == [y_alone.shape[1]] == [out_lengths[b].item()]
        (y_alone * weights[b : b + 1, : y_alone.shape[1]]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, : y_alone.shape[1]], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x.grad[b : b + 1, :n], alone.grad, atol=1e-5, rtol=1e-4)


def test_frequency_padding_reflects() -> None:
    """SpeechBrain pads frequency by reflection: a single-bin input still gives sensible values,
    and the first stage sees bin 1 mirrored at bin -1."""
    model = make()
    block = model.blocks[0]
    x = torch.randn(1, 1, 20, 5)
    seen = []
    handle = block.conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        block(x, torch.tensor([5]))
    handle.remove()
    padded = seen[0]  # (1, 1, 22, 7)
    assert padded.shape == (1, 1, 22, 7)
    torch.testing.assert_close(padded[..., 0, 1:-1], x[..., 1, :])
    torch.testing.assert_close(padded[..., -1, 1:-1], x[..., -2, :])
    assert torch.equal(padded[..., 0], torch.zeros_like(padded[..., 0]))  # time: zeros


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [({"kernel_size": 4}, "kernel_size"), ({"channels": ()}, "channels")],
)
def test_bad_options_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        ConvFrontEnd(20, 24, **kwargs)


def test_dtype_reaches_parameters_and_outputs() -> None:
    model = ConvFrontEnd(20, 24, channels=(8, 4), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    y, lengths = model(torch.randn(2, 9, 20, dtype=torch.float64), torch.tensor([9, 5]))
    assert y.dtype == torch.float64 and lengths.tolist() == [3, 2]


def test_gradient_reaches_every_parameter() -> None:
    model = make()
    y, _ = model(torch.randn(2, 17, 20), torch.tensor([17, 9]))
    (y * torch.randn_like(y)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name
