"""Tests for the Mamba blocks: init, padding, causality, streaming, devices, gradients."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mamba_asr.modules.mamba as mamba_module
from helpers.checks import assert_rel_close
from helpers.interpreter import needs_interpreter, needs_triton
from mamba_asr.modules.mamba import BiMamba, Mamba, MambaState
from mamba_asr.modules.masks import reverse_index
from mamba_asr.ops.selective_scan import available_backends

BLOCKS = [Mamba, BiMamba]


def make(cls: type, seed: int = 0, **kwargs: object) -> Mamba | BiMamba:
    torch.manual_seed(seed)
    opts = {"d_model": 16, "d_state": 8, "expand": 2, "d_conv": 4}
    opts.update(kwargs)
    return cls(**opts)


@pytest.mark.parametrize("cls", BLOCKS)
def test_output_shape_and_dtype(cls: type) -> None:
    model = make(cls, d_model=24)
    torch.manual_seed(1)
    x = torch.randn(3, 11, 24)
    y = model(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and y.abs().max() > 0


@pytest.mark.parametrize("cls", BLOCKS)
def test_init(cls: type) -> None:
    dt_min, dt_max = 0.002, 0.05
    model = make(cls, d_model=32, d_state=6, dt_min=dt_min, dt_max=dt_max, dtype=torch.float64)
    assert model.dt_rank == math.ceil(32 / 16) and model.d_inner == 64
    branches = [model.fwd] + ([model.bwd] if cls is BiMamba else [])
    for branch in branches:
        # A_log and D stay fp32 whatever the module dtype
        assert branch.A_log.dtype == torch.float32 and branch.D.dtype == torch.float32
        assert branch.x_proj.weight.dtype == torch.float64
        expected = torch.log(torch.arange(1, 7, dtype=torch.float32)).repeat(64, 1)
        torch.testing.assert_close(branch.A_log.detach(), expected, atol=0, rtol=0)
        torch.testing.assert_close(branch.D.detach(), torch.ones(64), atol=0, rtol=0)
        assert branch.A_log._no_weight_decay and branch.D._no_weight_decay
        dt = F.softplus(branch.dt_proj.bias.detach())
        assert dt.min() >= dt_min * (1 - 1e-6) and dt.max() <= dt_max * (1 + 1e-6)
        assert dt.max() / dt.min() > 3  # sampled over the range, not a constant
        bound = model.dt_rank**-0.5
        w = branch.dt_proj.weight.detach()
        assert w.abs().max() <= bound and w.std() > bound / 4
    if cls is BiMamba:  # the two directions are initialised independently
        assert not torch.equal(model.fwd.dt_proj.bias, model.bwd.dt_proj.bias)


def test_dt_init_constant_and_floor() -> None:
    model = make(Mamba, dt_init="constant", dt_scale=2.0, dt_min=1e-6, dt_max=2e-6)
    w = model.fwd.dt_proj.weight.detach()
    torch.testing.assert_close(w, torch.full_like(w, 2.0 * model.dt_rank**-0.5))
    dt = F.softplus(model.fwd.dt_proj.bias.detach())
    torch.testing.assert_close(dt, torch.full_like(dt, 1e-4), rtol=1e-3, atol=0)  # the floor


@pytest.mark.parametrize(
    ("option", "value"),
    [("dt_init", "normal"), ("dt_rank", 0), ("dt_rank", "big"), ("d_state", 0), ("d_conv", 0)],
)
def test_bad_options_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Mamba(16, **{option: value})


def test_matches_mambapy() -> None:
    """Same weights in mambapy's independent sequential MambaBlock give the same output."""
    mambapy = pytest.importorskip("mambapy.mamba")
    config = mambapy.MambaConfig(
        d_model=16, n_layers=1, d_state=8, expand_factor=2, d_conv=4, pscan=False, bias=True
    )
    theirs = mambapy.MambaBlock(config)
    ours = make(Mamba, bias=True)
    state = {k.removeprefix("fwd."): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    torch.manual_seed(2)
    x = torch.randn(2, 20, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


def causal_copy(bi: BiMamba, branch: str) -> Mamba:
    """A causal block with bi's in_proj, out_proj and ``branch`` ("fwd" or "bwd") as its scan."""
    state = {}
    for key, value in bi.state_dict().items():
        prefix, _, rest = key.partition(".")
        if prefix == branch:
            state[f"fwd.{rest}"] = value
        elif prefix not in ("fwd", "bwd"):
            state[key] = value
    causal = make(Mamba, bias=True)
    causal.load_state_dict(state)
    return causal


def test_bimamba_is_mean_of_two_directions() -> None:
    """Without padding, BiMamba = (causal block(x) + causal block(x reversed) reversed) / 2."""
    bi = make(BiMamba, bias=True)
    fwd, bwd = causal_copy(bi, "fwd"), causal_copy(bi, "bwd")
    torch.manual_seed(3)
    x = torch.randn(2, 17, 16)
    expected = (fwd(x) + bwd(x.flip(1)).flip(1)) / 2
    torch.testing.assert_close(bi(x), expected, atol=1e-5, rtol=1e-4)


def test_reverse_index() -> None:
    index = reverse_index(torch.tensor([4, 2, 0]), 5, torch.device("cpu"))
    expected = torch.tensor([[3, 2, 1, 0, 4], [1, 0, 2, 3, 4], [0, 1, 2, 3, 4]])
    assert torch.equal(index, expected)


@pytest.mark.parametrize("cls", BLOCKS)
def test_padded_batch_equals_each_alone(cls: type) -> None:
    model = make(cls, bias=True)
    torch.manual_seed(4)
    lengths = torch.tensor([23, 9, 16, 1])
    length = int(lengths.max())
    x = torch.randn(len(lengths), length, 16)
    valid = torch.arange(length)[None, :] < lengths[:, None]
    garbage = 1e3 * torch.randn_like(x)
    x = torch.where(valid[..., None], x, garbage).requires_grad_()
    weights = torch.randn(len(lengths), length, 16)  # random output weights for the gradient

    y = model(x, lengths)
    (y * weights).sum().backward()
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    for b, n in enumerate(lengths.tolist()):
        x_alone = x[b : b + 1, :n].detach().clone().requires_grad_()
        y_alone = model(x_alone)
        (y_alone * weights[b : b + 1, :n]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, :n], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x.grad[b : b + 1, :n], x_alone.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", BLOCKS)
def test_causality(cls: type) -> None:
    model = make(cls)
    torch.manual_seed(5)
    x = torch.randn(2, 20, 16)
    t = 12
    x2 = x.clone()
    x2[:, t] += torch.randn(2, 16)
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    past_change = (y[:, :t] - y2[:, :t]).abs().amax(dim=(0, 2))  # (t,)
    assert (y[:, t:] - y2[:, t:]).abs().max() > 1e-3
    if cls is Mamba:
        assert past_change.max() < 1e-6
    else:  # every earlier frame sees the change through the backward scan
        assert past_change.min() > 1e-6


@pytest.mark.parametrize("d_conv", [4, 2, 1])
def test_streaming_equals_full_forward(d_conv: int) -> None:
    model = make(Mamba, d_model=16, d_state=8, d_conv=d_conv, bias=True)
    torch.manual_seed(6)
    batch, length = 2, 30
    x = torch.randn(batch, length, 16)
    with torch.no_grad():
        full = model(x)
    gen = torch.Generator().manual_seed(7)
    splits = [[1] * length, [length]]
    splits += [torch.randint(1, 8, (length,), generator=gen).tolist() for _ in range(3)]
    for sizes in splits:
        state = model.init_state(batch)
        assert isinstance(state, MambaState)
        assert state.conv.shape == (batch, 32, d_conv - 1) and state.conv.dtype == x.dtype
        assert state.ssm.shape == (batch, 32, 8) and state.ssm.dtype == torch.float32
        outs, start = [], 0
        with torch.no_grad():
            for size in sizes:
                if start >= length:
                    break
                y, state = model.forward_chunk(x[:, start : start + size], state)
                outs.append(y)
                start += size
        torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_streaming_state_dtype_follows_module() -> None:
    model = make(Mamba).to(torch.float64)
    state = model.init_state(2)
    assert state.conv.dtype == torch.float64 and state.ssm.dtype == torch.float32
    torch.manual_seed(8)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y, state = model.forward_chunk(x, state)
    assert y.dtype == torch.float64 and state.conv.dtype == torch.float64
    assert state.ssm.dtype == torch.float32


@pytest.mark.parametrize("cls", BLOCKS)
def test_to_dtype_and_meta(cls: type) -> None:
    model = make(cls).to(torch.float64)
    assert model.fwd.A_log._no_weight_decay  # the flag survives the conversion
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float64, name
    torch.manual_seed(9)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    assert model(x, torch.tensor([7, 3])).dtype == torch.float64

    model = model.to("meta")
    tensors = list(model.state_dict().items()) + list(model.named_buffers())
    assert tensors
    for name, tensor in tensors:
        assert tensor.device.type == "meta", name
    y = model(x.to("meta"), torch.tensor([7, 3], device="meta"))
    assert y.device.type == "meta" and y.shape == x.shape


def test_built_on_meta() -> None:
    model = Mamba(16, d_state=4, device="meta", dtype=torch.float16)
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == "meta", name
    assert model.fwd.A_log.dtype == torch.float32 and model.in_proj.weight.dtype == torch.float16
    state = model.init_state(3)
    assert state.conv.device.type == "meta" and state.conv.dtype == torch.float16


@pytest.mark.parametrize("cls", BLOCKS)
def test_gradient_reaches_every_parameter(cls: type) -> None:
    model = make(cls, bias=True)
    torch.manual_seed(10)
    x = torch.randn(2, 12, 16)
    y = model(x, torch.tensor([12, 7]))
    (y * torch.randn_like(y)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


# --- BiMamba's fused pass (both directions at once) against the two-pass path


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # set by the subprocess test below
# the Triton kernel runs in its CPU interpreter only there (slow: smaller sizes)
SCAN_BACKENDS = ["triton"] if INTERPRETED else available_backends("cpu")


def _fused_and_two_pass(
    backend: str, **kwargs: object
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Output, input gradient and every parameter gradient, fused and two-pass, same inputs."""
    d_model, lengths = (8, [11, 4]) if backend == "triton" else (16, [29, 8, 17, 1, 24])
    model = make(BiMamba, d_model=d_model, d_state=6, **kwargs)
    torch.manual_seed(12)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), d_model)
    return _both_passes(model, x, lengths, backend)


def _both_passes(
    model: BiMamba, x: torch.Tensor, lengths: torch.Tensor, backend: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``model`` on (x, lengths) fused, then two-pass, under one random weighting of its output:
    output, input gradient and every parameter gradient of each; the scan on ``backend`` (None:
    the dispatcher's choice for x's device)."""
    weights = torch.randn_like(x)
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad(set_to_none=True)
        x_run = x.clone().requires_grad_()
        with pytest.MonkeyPatch.context() as patch:
            if backend is not None:
                scan = functools.partial(mamba_module.selective_scan_fn, backend=backend)
                patch.setattr(mamba_module, "selective_scan_fn", scan)
            y = model(x_run, lengths)
        (y * weights).sum().backward()
        grads = {f"param {name}": p.grad for name, p in model.named_parameters()}
        results.append({"output": y.detach(), "input grad": x_run.grad, **grads})
    return results[0], results[1]


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize(
    "options, pad_frames",
    [({"bias": True}, "1"), ({"conv_bias": False, "dt_rank": 3}, "1"), ({"bias": True}, "16")],
)
def test_bimamba_fused_equals_two_pass(
    backend: str, options: dict[str, object], pad_frames: str, monkeypatch
) -> None:
    """The fused pass, its frames as given or padded to a multiple of 16 (MAMBA_ASR_PAD_FRAMES),
    against the two branches one after the other."""
    assert BiMamba(16).fused  # the default path is the fused one
    monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, pad_frames)
    fused, two_pass = _fused_and_two_pass(backend, **options)
    assert fused.keys() == two_pass.keys()
    for what, expected in two_pass.items():
        assert expected is not None and expected.abs().max() > 0, what
        tol = 1e-5 if what == "output" else 1e-4
        assert_rel_close(fused[what], expected, tol, f"{backend}: {what}")


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the test that starts the interpreted run")
@needs_triton
@needs_interpreter
def test_bimamba_fused_equals_two_pass_triton_interpreted() -> None:
    """The test above with the Triton scan (B/C in two groups) and the Triton depthwise conv in
    triton's CPU interpreter: a subprocess, since triton reads TRITON_INTERPRET at import."""
    # the depthwise conv's kernels too (their default backend is "torch" until a GPU times them)
    env = {**os.environ, "TRITON_INTERPRET": "1", "MAMBA_ASR_DEPTHWISE_CONV": "auto"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", __file__]
    # the frames as given and padded; the module options of the third case (no conv bias, another
    # dt rank) change no kernel and are tested with the other backends
    proc = subprocess.run(
        [*command, "-k", "test_bimamba_fused_equals_two_pass and triton and not options1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout, proc.stdout[-2000:]


def test_scan_frames_and_a_padded_pass_without_lengths(monkeypatch) -> None:
    """MAMBA_ASR_PAD_FRAMES rounds the fused pass's frames up (unset: to 16 on CUDA, as given
    elsewhere; set, on every device; a bad value is named); a whole-length batch (no lengths)
    padded gives the unpadded outputs and gradients."""
    monkeypatch.delenv(mamba_module.PAD_FRAMES_ENV, raising=False)
    assert mamba_module.scan_frames(750) == 750
    assert mamba_module.scan_frames(750, torch.device("cpu")) == 750
    assert mamba_module.scan_frames(750, "mps") == 750
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs there
    assert [mamba_module.scan_frames(n, cuda) for n in (1, 16, 750, 1500)] == [16, 16, 752, 1504]
    monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, "1")
    assert mamba_module.scan_frames(750, cuda) == 750
    monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, "16")
    assert [mamba_module.scan_frames(n) for n in (1, 16, 750, 1500)] == [16, 16, 752, 1504]
    assert mamba_module.scan_frames(750, cuda) == 752
    for bad in ("0", "x"):
        monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, bad)
        with pytest.raises(ValueError, match=mamba_module.PAD_FRAMES_ENV):
            mamba_module.scan_frames(10)
    model = make(BiMamba, d_model=8, d_state=4)
    torch.manual_seed(15)
    x = torch.randn(2, 21, 8)
    results = []
    for pad in ("1", "16"):
        monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, pad)
        model.zero_grad(set_to_none=True)
        x_run = x.clone().requires_grad_()
        y = model(x_run)
        y.square().sum().backward()
        results.append([y, x_run.grad, *(p.grad for p in model.parameters())])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("pad_frames", [None, "1"])
def test_bimamba_fused_on_cuda_equals_two_pass(pad_frames: str | None, monkeypatch) -> None:
    """On CUDA (Triton scan, conv and reshuffles) the fused pass, with its frames padded to 16
    (the default there) or as given, equals the two branches one after the other; fp32, a
    padded batch whose longest utterance is not a multiple of 16 frames."""
    if pad_frames is None:
        monkeypatch.delenv(mamba_module.PAD_FRAMES_ENV, raising=False)
    else:
        monkeypatch.setenv(mamba_module.PAD_FRAMES_ENV, pad_frames)
    cuda = torch.device("cuda")
    assert mamba_module.scan_frames(45, cuda) == (48 if pad_frames is None else 45)
    model = make(BiMamba, d_model=32, d_state=16, bias=True).to(cuda)
    torch.manual_seed(16)
    lengths = torch.tensor([45, 8, 33, 1], device=cuda)
    x = torch.randn(4, 45, 32, device=cuda)
    fused, two_pass = _both_passes(model, x, lengths)
    for what, expected in two_pass.items():
        assert expected is not None and expected.abs().max() > 0, what
        assert_rel_close(fused[what], expected, 1e-4, f"cuda: {what}")


def test_bimamba_calls_a_hooked_in_proj_as_a_module() -> None:
    """The fused pass computes in_proj as W x^T, unless in_proj has hooks (QAT's input
    quantizer): then the module is called, and its hook sees the block's input."""
    model = make(BiMamba, d_model=8, d_state=4)
    torch.manual_seed(14)
    x, lengths = torch.randn(2, 9, 8), torch.tensor([9, 5])
    plain = model(x, lengths)
    seen = []
    handle = model.in_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    hooked = model(x, lengths)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], x)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)


def test_bimamba_fused_and_two_pass_share_parameters() -> None:
    """Same parameter names and shapes either way: checkpoints load into both."""
    fused, two_pass = make(BiMamba), make(BiMamba, fused=False)
    assert not two_pass.fused
    shapes = {name: tuple(t.shape) for name, t in fused.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in two_pass.state_dict().items()}
    assert all(name.split(".")[0] in ("in_proj", "out_proj", "fwd", "bwd") for name in shapes)
    two_pass.load_state_dict(fused.state_dict())
    torch.manual_seed(13)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(fused(x), two_pass(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_bimamba_padded_batch_equals_each_alone_both_paths(fused: bool) -> None:
    model = make(BiMamba, bias=True, fused=fused)
    torch.manual_seed(14)
    lengths = torch.tensor([3, 19, 11])
    x = torch.randn(len(lengths), 19, 16)
    valid = torch.arange(19)[None, :] < lengths[:, None]
    x = torch.where(valid[..., None], x, 1e3 * torch.randn_like(x))
    with torch.no_grad():
        y = model(x, lengths)
        assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :n])
            torch.testing.assert_close(y[b : b + 1, :n], alone, atol=1e-5, rtol=1e-4)
