"""Every selective-scan backend against the sequential reference: outputs, last state, gradients."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers.checks import assert_rel_close
from mamba_asr.ops.selective_scan import (
    available_backends,
    resolve_backend,
    selective_scan_fn,
    selective_scan_ref,
)

FAST = [b for b in available_backends("cpu") if b != "ref"]
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

# (z, D, delta_bias, softplus, initial_state, groups)
OPTIONS = {
    "all": (True, True, True, True, True, 1),
    "none": (False, False, False, False, False, None),
    "z_groups": (True, False, False, True, False, 2),
    "state_bias": (False, True, True, False, True, None),
    "groups4_state": (True, True, False, True, True, 4),
}


def make_inputs(seed, batch, dim, d_state, length, opts, dtype=torch.float32):
    z, D, bias, softplus, state, groups = opts
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(dt).requires_grad_()

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    if not softplus:  # dt must be positive without the softplus
        delta = delta.abs() + 0.05
    bias_t = r(dim, scale=0.3, dt=torch.float32)
    if not softplus:
        bias_t = bias_t.detach().abs().requires_grad_()
    args = dict(
        u=r(batch, dim, length),
        delta=delta.to(dtype).requires_grad_(),
        A=(-torch.exp(torch.randn(dim, d_state, generator=g) * 0.5)).requires_grad_(),
        B=r(*bc_shape),
        C=r(*bc_shape),
        D=r(dim, dt=torch.float32) if D else None,
        z=r(batch, dim, length) if z else None,
        delta_bias=bias_t if bias else None,
        delta_softplus=softplus,
        return_last_state=True,
        initial_state=r(batch, dim, d_state, dt=torch.float32) if state else None,
    )
    return args


def run(fn, args, seed, **kw):
    out, last = fn(**args, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    gout = torch.randn(out.shape, generator=g).to(out.dtype)
    glast = torch.randn(last.shape, generator=g)
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    grads = torch.autograd.grad(
        (out.float() * gout.float()).sum() + (last * glast).sum(), list(tensors.values())
    )
    return out, last, dict(zip(tensors, grads, strict=True))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("length", [1, 7, 64, 333, 1024])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_reference_fp32(backend, length, option):
    seed = length * 31 + len(option)
    args = make_inputs(seed, batch=2, dim=8, d_state=16 if length != 7 else 5, length=length,
                       opts=OPTIONS[option])  # fmt: skip
    out_r, last_r, grads_r = run(selective_scan_ref, args, seed)
    out, last, grads = run(selective_scan_fn, args, seed, backend=backend)
    assert out.dtype == args["u"].dtype and last.dtype == torch.float32
    assert_rel_close(out, out_r, TOL[torch.float32], "out")
    assert_rel_close(last, last_r, TOL[torch.float32], "last_state")
    for name, g in grads_r.items():
        assert_rel_close(grads[name], g, 1e-3, f"d{name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length", [7, 333])
def test_matches_reference_half(backend, dtype, length):
    seed = 7 * length
    args = make_inputs(seed, 2, 8, 16, length, OPTIONS["all"], dtype=dtype)
    out_r, last_r, grads_r = run(selective_scan_ref, args, seed)
    out, last, grads = run(selective_scan_fn, args, seed, backend=backend)
    assert out.dtype == dtype
    assert_rel_close(out, out_r, TOL[dtype], "out")
    assert_rel_close(last, last_r, TOL[dtype], "last_state")
    for name, g in grads_r.items():
        assert grads[name].dtype == args[name].dtype
        assert_rel_close(grads[name], g, TOL[dtype], f"d{name}")


@pytest.mark.parametrize("backend", FAST)
def test_state_carries_across_calls(backend):
    """Scanning in two pieces with initial_state equals one scan (the basis of streaming)."""
    args = make_inputs(3, 2, 8, 16, 100, OPTIONS["all"])
    full = selective_scan_fn(**args, backend=backend)[0]
    first = {k: (v[..., :37] if k in ("u", "delta", "z", "B", "C") else v) for k, v in args.items()}
    second = {
        k: (v[..., 37:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in args.items()
    }
    y1, h1 = selective_scan_fn(**first, backend=backend)
    second["initial_state"] = h1
    y2, _ = selective_scan_fn(**second, backend=backend)
    assert_rel_close(torch.cat([y1, y2], -1), full, 1e-5, "two pieces")


@pytest.mark.parametrize("backend", FAST)
def test_backward_keeps_no_per_step_states(backend):
    """Autograd saves O(B*D*L) for the backward, not the (B, D, N, L) states."""
    batch, dim, d_state, length = 1, 64, 16, 2048
    args = make_inputs(0, batch, dim, d_state, length, OPTIONS["all"])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        selective_scan_fn(**args, backend=backend)
    states = batch * dim * d_state * length
    assert sum(saved) < states / 2, f"saved {sum(saved)} elements, per-step states are {states}"


@pytest.mark.skipif("native" not in FAST, reason="no C compiler here")
def test_native_kernel_keeps_subnormals():
    """Loading the kernel must not switch the process to flush-to-zero (as -ffast-math would)."""
    args = make_inputs(1, 1, 4, 4, 8, OPTIONS["none"])
    selective_scan_fn(**args, backend="native")
    tiny = torch.tensor([1e-38]) / 100  # a subnormal float32
    assert tiny.item() > 0


def test_auto_backend_per_device():
    cpu = resolve_backend(torch.device("cpu"))
    assert cpu == ("native" if "native" in FAST else "chunked")
    assert resolve_backend(torch.device("meta")) == "chunked"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(torch.device("cpu"), "fast")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend(torch.device("meta"), "native")


def test_falls_back_when_no_compiler(tmp_path):
    """No C compiler: auto falls back to chunked with one INFO line; asking for native says why."""
    code = (
        "import logging, torch;"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s');"
        "from mamba_asr.ops.selective_scan import resolve_backend, selective_scan_fn;"
        "print('auto=' + resolve_backend(torch.device('cpu')));"
        "u = torch.randn(1, 2, 5);"
        "selective_scan_fn(u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5),"
        " torch.randn(1, 3, 5), backend='native')"
    )
    env = {**os.environ, "CC": "/bin/false", "MAMBA_ASR_CACHE": str(tmp_path)}
    env["PATH"] = str(tmp_path)  # no cc/gcc/clang either
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "auto=chunked" in proc.stdout
    assert proc.stderr.count("native CPU selective scan unavailable") == 1
    assert proc.returncode != 0 and "needs a C compiler" in proc.stderr


def test_bad_shapes_name_the_argument():
    u = torch.randn(2, 4, 10)
    A = -torch.ones(4, 3)
    B = torch.randn(2, 3, 10)
    with pytest.raises(ValueError, match="delta"):
        selective_scan_fn(u, u[..., :5], A, B, B)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_fn(u, u, A[:3], B, B)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan_fn(u, u, A, B, torch.randn(2, 3, 3, 10))
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_fn(u, u, A, B, B, initial_state=torch.randn(2, 4, 2))
