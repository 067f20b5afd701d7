"""Tests for the causal front end: shapes, causality, padding, streaming equals full forward."""

from __future__ import annotations

import random

import pytest
import torch

from mamba_asr.modules.causal_frontend import CausalConvFrontEnd, CausalFrontEndState

N_MELS, D_MODEL = 12, 16


def make(stages: int, kernel_size: int = 5) -> CausalConvFrontEnd:
    torch.manual_seed(0)
    return CausalConvFrontEnd(N_MELS, D_MODEL, [8] * stages, kernel_size).eval()


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("frames", [1, 7, 8, 9, 33])
def test_shapes_and_lengths(stages: int, frames: int) -> None:
    fe = make(stages)
    factor = 2**stages
    assert fe.subsampling == factor
    x, lengths = fe(torch.randn(2, frames, N_MELS))
    expected = -(-frames // factor)  # ceil
    assert x.shape == (2, expected, D_MODEL)
    assert lengths.tolist() == [expected, expected]
    assert torch.isfinite(x).all() and x.abs().max() > 0


def test_causal() -> None:
    """Changing input frames from t on leaves every output frame j with j * S < t unchanged."""
    fe = make(2)
    feats = torch.randn(1, 40, N_MELS)
    y, _ = fe(feats)
    changed = feats.clone()
    changed[:, 21:] = torch.randn(1, 19, N_MELS)
    y2, _ = fe(changed)
    torch.testing.assert_close(y2[:, :6], y[:, :6], atol=0, rtol=0)  # frames 0..5 see x[:21]
    assert not torch.allclose(y2[:, 6:], y[:, 6:])


def test_padded_batch_equals_each_alone() -> None:
    fe = make(3)
    lengths = [37, 16, 5]
    utts = [torch.randn(n, N_MELS) for n in lengths]
    batch = torch.full((3, 37, N_MELS), float("nan"))  # padding content must not matter
    for i, u in enumerate(utts):
        batch[i, : len(u)] = u
    x, out_lengths = fe(batch, torch.tensor(lengths))
    assert out_lengths.tolist() == [5, 2, 1]
    for i, u in enumerate(utts):
        alone, _ = fe(u[None])
        n = out_lengths[i]
        torch.testing.assert_close(x[i, :n], alone[0], atol=1e-6, rtol=1e-5)
        assert (x[i, n:] == 0).all()


@pytest.mark.parametrize("stages", [2, 3])
def test_streaming_equals_full(stages: int) -> None:
    """Chunks of multiples of S (the last one of any length) give the full output."""
    fe = make(stages, kernel_size=4)
    factor = 2**stages
    rng = random.Random(stages)
    for _ in range(4):
        frames = rng.randint(1, 70)
        feats = torch.randn(2, frames, N_MELS)
        full, _ = fe(feats)
        state = fe.init_state(2)
        assert isinstance(state, CausalFrontEndState) and len(state.caches) == stages
        outs, start = [], 0
        while start < frames:
            size = factor * rng.randint(1, 3)
            y, state = fe.forward_chunk(feats[:, start : start + size], state)
            outs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-6, rtol=1e-5)


def test_init_state_device_dtype() -> None:
    fe = make(2, kernel_size=3)
    state = fe.init_state(3, dtype=torch.float64)
    assert [tuple(c.shape) for c in state.caches] == [(3, N_MELS, 2), (3, 8, 2)]
    assert all(c.dtype == torch.float64 and (c == 0).all() for c in state.caches)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="kernel_size must be >= 2"):
        CausalConvFrontEnd(N_MELS, D_MODEL, [8, 8], kernel_size=1)
    with pytest.raises(ValueError, match="channels"):
        CausalConvFrontEnd(N_MELS, D_MODEL, [], kernel_size=3)
