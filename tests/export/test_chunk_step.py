"""``ChunkStep``, the form the chunk graph is exported from, computes ``forward_chunk``.

On random tiny transducers (the causal front end, the Mamba encoder) with random weights and
states from inside a stream (never zeros): chunks of a full length and shorter, batches of one
and two, three chunks in a row, each from the state the last one left; the memory, the
joiner's encoder projection and every state tensor within 1e-5 of the model's own
``forward_chunk`` (fp32; they differ by the order of the roundings only), the states in
``ChunkStep``'s layout (``time_first``).
"""

from __future__ import annotations

import pytest
import torch

from helpers.recipes import tiny_transducer_config
from mamba_asr.export.chunk_step import ChunkStep, supports_chunk_step, time_first
from mamba_asr.export.onnx import state_leaves
from mamba_asr.models.factory import build_model
from mamba_asr.models.streaming import map_state

TOLERANCE = 1e-5


def tiny(seed: int, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(tiny_transducer_config(**overrides)).eval()
    with torch.no_grad():  # A_log, D and the dt bias away from their initial values
        for layer in model.encoder.layers:
            branch = layer.mamba.fwd
            branch.A_log.add_(0.5 * torch.randn_like(branch.A_log))
            branch.D.copy_(torch.randn_like(branch.D))
            branch.dt_proj.bias.add_(torch.randn_like(branch.dt_proj.bias))
    return model


MODELS = {
    "tiny": {},
    "8x, d_conv 4": {"frontend": {"subsampling": 8, "channels": [8, 8, 8], "kernel_size": 5},
                     "mamba": {"d_conv": 4, "d_state": 16}},
    "d_inner 20 (pruned)": {"mamba": {"d_inner": 20}, "frontend": {"channels": [8, 5]}},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("batch", "frames"), [(1, 32), (2, 32), (2, 24), (1, 13), (2, 1)])
def test_chunk_step_equals_forward_chunk(name, batch, frames):
    model = tiny(batch + frames, **MODELS[name])
    step = ChunkStep(model, 32).eval()
    gen = torch.Generator().manual_seed(frames)
    state = map_state(
        lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype), model.init_state(batch)
    )
    flat = [time_first(t) for _, t in state_leaves(state, "s")]
    n_mels = model.frontend.stages[0].in_channels
    for _ in range(3):
        chunk = 2 * torch.randn(batch, frames, n_mels, generator=gen)
        with torch.no_grad():
            memory, state = model.forward_chunk(chunk, state)
            proj = model.joiner.project_encoder(memory)
            got = step(chunk, *flat)
        assert got[0].shape == memory.shape
        torch.testing.assert_close(got[0], memory, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(got[1], proj, atol=TOLERANCE, rtol=0)
        expected = state_leaves(state, "s")
        assert len(got) == 2 + len(expected)
        for (key, want), new in zip(expected, got[2:], strict=True):
            torch.testing.assert_close(new, time_first(want), atol=TOLERANCE, rtol=0, msg=key)
        flat = list(got[2:])


def test_chunk_step_leaves_the_state_alone_past_the_valid_frames():
    """A chunk of 13 frames (4 encoder frames at 4x, the last from one frame) and the same
    chunk padded by zeros to 32 frames give different states: the padding is not input."""
    model = tiny(0)
    step = ChunkStep(model, 32).eval()
    state = [time_first(t) for _, t in state_leaves(model.init_state(1), "s")]
    chunk = torch.randn(1, 13, 20)
    with torch.no_grad():
        short = step(chunk, *state)
        padded = step(torch.nn.functional.pad(chunk, (0, 0, 0, 19)), *state)
    assert short[0].shape[1] == 4 and padded[0].shape[1] == 8
    torch.testing.assert_close(short[0], padded[0][:, :4])
    assert not torch.allclose(short[-1], padded[-1])


def test_other_models_are_refused():
    model = tiny(0)
    assert supports_chunk_step(model)
    model.encoder = torch.nn.Identity()
    assert not supports_chunk_step(model)
    with pytest.raises(TypeError, match="Mamba encoder"):
        ChunkStep(model, 32)


def test_softplus_is_pytorchs_within_the_rounding_of_one_plus_exp():
    from mamba_asr.export.chunk_step import _softplus

    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([-1e30, 1e30, 88.0, 89.0])])
    got, want = _softplus(x), torch.nn.functional.softplus(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1.2e-7, rtol=1.2e-7)
    big = x > 20
    assert torch.equal(got[big], x[big])
