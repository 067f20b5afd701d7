"""The Triton RNN-T recursions against the PyTorch ones: alpha and beta tables, posteriors, the full,
simple and pruned losses and their gradients; on CUDA when present, else in triton's CPU
interpreter (TRITON_INTERPRET=1, in a subprocess since triton reads it at import). Also how the
backend is chosen (argument, MAMBA_ASR_RNNT_BACKEND) and the errors when it cannot run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers.interpreter import HAS_TRITON, interpreted_json, needs_interpreter, needs_triton
from mamba_asr.ops.pruned_rnnt import (
    band_join,
    prune_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)
from mamba_asr.ops.rnnt_loss import lattice_torch, resolve_rnnt_backend, rnnt_loss

# (batch, frames, tokens, vocab, blank, seed); ragged lengths with a one-frame utterance and one
# without tokens where the batch allows
CASES = {
    "b4_t6_u3_v5": (4, 6, 3, 5, 0, 0),
    "b3_t1_u2_v4": (3, 1, 2, 4, 0, 1),
    "b3_t5_u0_v3": (3, 5, 0, 3, 0, 2),
    "b3_t10_u17_v9_blank_last": (3, 10, 17, 9, -1, 3),
    "b2_t5_u40_v6": (2, 5, 40, 6, 0, 4),
    "b2_t12_u33_v7": (2, 12, 33, 7, 2, 5),
}
SLOW = {"b2_t12_u33_v7"}
TOL = 1e-5


def make_case(batch, frames, n_tok, vocab, blank, seed, device="cpu"):
    """Logits (B, T, U + 1, V), am (B, T, V), lm (B, U + 1, V), non-blank targets, lengths."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, frames, n_tok + 1, vocab, generator=g)
    am = 2 * torch.randn(batch, frames, vocab, generator=g)
    lm = 2 * torch.randn(batch, n_tok + 1, vocab, generator=g)
    targets = torch.randint(0, vocab - 1, (batch, n_tok), generator=g)
    targets = targets + (targets >= blank % vocab).long()  # never the blank
    logit_lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    target_lengths = torch.randint(0, n_tok + 1, (batch,), generator=g)
    logit_lengths[0], target_lengths[0] = frames, n_tok
    if batch > 2:
        logit_lengths[1], target_lengths[2] = 1, 0
    tensors = (logits, am, lm, targets, logit_lengths, target_lengths)
    return tuple(t.to(device) for t in tensors)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over b's finite entries; inf where the -inf / NaN pattern differs."""
    a, b = a.detach().float(), b.detach().float()
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)) or a.isnan().any():
        return float("inf")
    f = torch.isfinite(b)
    if not f.any():
        return 0.0
    return ((a[f] - b[f]).abs().max() / b[f].abs().max().clamp_min(1e-6)).item()


def losses_and_grads(name: str, device: str, backend: str) -> dict[str, torch.Tensor]:
    """Tables, losses, posteriors and gradients of one case (a name of CASES or a tuple like
    them) from one backend."""
    batch, frames, n_tok, vocab, blank, seed = CASES.get(name, name)
    logits, am, lm, targets, tl, ul = make_case(batch, frames, n_tok, vocab, blank, seed, device)
    weights = torch.linspace(0.5, 1.5, batch, device=device)
    out: dict[str, torch.Tensor] = {}
    # the lattice on the full joint's log-probs: tables and posteriors
    lp = logits.log_softmax(-1)
    idx = targets[:, None, :, None].expand(-1, frames, -1, -1)
    lp_blank = lp[..., blank % vocab].contiguous()
    lp_emit = F.pad(lp[:, :, :n_tok].gather(-1, idx)[..., 0], (0, 1), value=float("-inf"))
    if backend == "torch":
        out["alpha"], out["beta"], out["log_p"] = lattice_torch(lp_blank, lp_emit, tl, ul)
    else:
        from mamba_asr.ops.rnnt_triton import lattice_triton

        out["alpha"], out["beta"], out["log_p"] = lattice_triton(lp_blank, lp_emit, tl, ul)
    # the full loss (its lattice: the grids above)
    x = logits.detach().requires_grad_()
    loss = rnnt_loss(x, targets, tl, ul, blank, reduction="none", backend=backend)
    out["full"] = loss
    out["d_full"] = torch.autograd.grad((loss * weights).sum(), x)[0]
    # simple, then pruned on its ranges (R = 3, and the full band)
    am, lm = am.requires_grad_(), lm.requires_grad_()
    simple = rnnt_loss_simple(lm, am, targets, tl, ul, blank, reduction="none", backend=backend)
    out["simple"], out["simple_post_blank"], out["simple_post_emit"] = simple
    out["d_simple_am"], out["d_simple_lm"] = torch.autograd.grad(simple.loss.sum(), (am, lm))
    # each backend's prune ranges, on posteriors whose window sums are exact in any order (so
    # both pick the same window)
    g = torch.Generator().manual_seed(seed)
    q = (torch.randint(0, 64, (batch, frames, n_tok + 1), generator=g) / 64).to(device)
    out["ranges"] = prune_ranges(q, q.flip(1), tl, ul, 3, backend=backend).float()
    for width in (4, n_tok + 1):
        # both backends prune on the torch backend's posteriors: the same band
        ref = rnnt_loss_simple(lm, am, targets, tl, ul, blank, reduction="none", backend="torch")
        ranges = prune_ranges(ref.blank_posterior, ref.emit_posterior, tl, ul, max(width, 2),
                              backend="torch")  # fmt: skip
        width = ranges.shape[-1]
        band = logits.gather(2, ranges[..., None].expand(-1, -1, -1, vocab))  # (B, T, R, V)
        band = band.detach().requires_grad_()
        loss = rnnt_loss_pruned(band, targets, ranges, tl, ul, blank, reduction="none",
                                backend=backend)  # fmt: skip
        out[f"pruned_{width}"] = loss
        out[f"d_pruned_{width}"] = torch.autograd.grad((loss * weights).sum(), band)[0]
    # the joiner's hidden layer on the band, from projections of width 520 (the kernels take
    # blocks of 512: a full one and a masked one), and on positions that are not consecutive
    g = torch.Generator().manual_seed(seed + 100)
    am_p = torch.randn(batch, frames, 520, generator=g).to(device).requires_grad_()
    lm_p = torch.randn(batch, n_tok + 1, 520, generator=g).to(device).requires_grad_()
    spots = torch.randint(0, n_tok + 1, (batch, frames, 3), generator=g).to(device)
    for name, where in (("band", ranges), ("spots", spots)):
        hidden = band_join(am_p, lm_p, where, backend=backend)
        w = torch.linspace(-1, 1, hidden.numel(), device=device).view_as(hidden)
        out[f"join_{name}"] = hidden
        out[f"d_join_{name}_am"], out[f"d_join_{name}_lm"] = torch.autograd.grad(
            (hidden * w).sum(), (am_p, lm_p)
        )
    return out


def errors(name, device: str) -> dict[str, float]:
    """Relative errors of every table, loss and gradient, triton against torch."""
    ref = losses_and_grads(name, device, "torch")
    got = losses_and_grads(name, device, "triton")
    return {k: rel_err(got[k], ref[k]) for k in ref}


@needs_triton
@needs_interpreter
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in CASES]
)
def test_triton_interpreted_matches_torch(name):
    errs = interpreted_json(__file__, name)
    # the triton backend computes the simple joint's log-probs in its own kernel, so they differ
    # from PyTorch's by an ulp; a posterior exp(alpha + lp + beta - log P) then moves by about
    # |log P| * 6e-8 relative (1.4e-5 at log P = -126 in b2_t5_u40_v6), and the gradients with it
    assert all(e <= (TOL if is_loss(k) or k in ("alpha", "beta") else 10 * TOL)
               for k, e in errs.items()), errs  # fmt: skip


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("shape", [(4, 500, 200, 32, 0, 7), (8, 257, 63, 16, 0, 8)])
def test_triton_cuda_matches_torch_large(shape):
    ref = losses_and_grads(shape, "cuda", "torch")
    got = losses_and_grads(shape, "cuda", "triton")
    for k, v in got.items():  # -inf off the lattice; inf: no path fits a band of 4 (T_b = 1)
        assert not v.isnan().any(), k
        assert k in ("alpha", "beta", "pruned_4") or torch.isfinite(v).all(), k
    # long lattices: with log P(y|x) near -2400 an fp32 rounding of alpha + beta - log P moves a
    # posterior exp(...) by ~1e-4 relative, so the posteriors of either backend are ~2e-3 from
    # fp64's (one utterance at T=500, U=200 in the interpreter) and ~2e-5 from each other
    # (interpreter, (8, 257, 63, 16)); the losses and tables agree to ~1e-6
    errs = {k: rel_err(got[k], ref[k]) for k in ref}
    assert all(e <= (1e-5 if is_loss(k) else 2e-3) for k, e in errs.items()), errs


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_band_join_cuda_matches_torch(dtype):
    """The band join kernels at a training shape (J = 512, R = 5) in fp32 and bf16 against the
    torch backend computed in fp32 from the same (rounded) inputs."""
    g = torch.Generator().manual_seed(11)
    am = torch.randn(8, 300, 512, generator=g).cuda().to(dtype).requires_grad_()
    lm = torch.randn(8, 81, 512, generator=g).cuda().to(dtype).requires_grad_()
    starts = torch.randint(0, 77, (8, 300), generator=g).sort(1).values.cuda()
    ranges = starts[..., None] + torch.arange(5, device="cuda")
    w = torch.randn(8, 300, 5, 512, generator=g).cuda()
    got = band_join(am, lm, ranges, backend="triton")
    assert got.dtype == dtype
    d_got = torch.autograd.grad((got.float() * w).sum(), (am, lm))
    am32, lm32 = (x.detach().float().requires_grad_() for x in (am, lm))
    ref = band_join(am32, lm32, ranges, backend="torch")
    d_ref = torch.autograd.grad((ref * w).sum(), (am32, lm32))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(got, ref) <= tol
    for a, b in zip(d_got, d_ref, strict=True):
        assert a.dtype == dtype and rel_err(a, b) <= tol


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_pruned_step_captures_as_a_cuda_graph():
    """The pruned loss's whole step (simple heads, simple loss, prune ranges, band join, output
    layer, pruned loss, backward) has no host synchronisation: it captures as a CUDA graph and
    the replay gives the eager loss and gradients."""
    g = torch.Generator().manual_seed(5)
    b, t, u, v, j = 4, 60, 12, 32, 64
    enc = torch.randn(b, t, j, generator=g).cuda().requires_grad_()
    pred = torch.randn(b, u + 1, j, generator=g).cuda().requires_grad_()
    targets = torch.randint(1, v, (b, u), generator=g).cuda().int()
    tl = torch.tensor([t, t - 7, t - 20, 9]).cuda().int()
    ul = torch.tensor([u, u - 3, 5, 0]).cuda().int()
    torch.manual_seed(0)
    heads = torch.nn.ModuleList(torch.nn.Linear(j, v) for _ in range(3)).cuda()

    def step():
        for x in (enc, pred, *heads.parameters()):
            x.grad = None
        simple = rnnt_loss_simple(heads[1](pred), heads[0](enc), targets, tl, ul,
                                  reduction="none", backend="triton")  # fmt: skip
        ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, 4)
        logits = heads[2](band_join(enc, pred, ranges, backend="triton"))
        pruned = rnnt_loss_pruned(logits, targets, ranges, tl, ul, reduction="none",
                                  backend="triton")  # fmt: skip
        loss = (pruned + 0.5 * simple.loss).mean()
        loss.backward()
        return loss.detach()

    eager = step()
    eager_grads = [x.grad.clone() for x in (enc, pred, *heads.parameters())]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(eager) and rel_err(captured, eager) <= 1e-5
    for x, ref in zip((enc, pred, *heads.parameters()), eager_grads, strict=True):
        assert rel_err(x.grad, ref) <= 1e-4


def is_loss(key: str) -> bool:
    """A loss or log P(y|x) of losses_and_grads (not a table, posterior or gradient)."""
    return key in ("log_p", "full", "simple") or re.fullmatch(r"pruned_\d+", key) is not None


def test_auto_is_triton_on_cuda_only_and_names_are_checked(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("MAMBA_ASR_RNNT_BACKEND", raising=False)
    assert resolve_rnnt_backend("auto", cpu) == "torch"
    assert resolve_rnnt_backend("auto", torch.device("mps")) == "torch"
    assert resolve_rnnt_backend("auto", cuda) == ("triton" if HAS_TRITON else "torch")
    assert resolve_rnnt_backend("torch", cuda) == "torch"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no triton
    assert resolve_rnnt_backend("auto", cuda) == "torch"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_rnnt_backend("cuda", cpu)
    monkeypatch.setenv("MAMBA_ASR_RNNT_BACKEND", "torch")
    assert resolve_rnnt_backend("auto", cpu) == "torch"
    monkeypatch.setenv("MAMBA_ASR_RNNT_BACKEND", "fast")
    with pytest.raises(ValueError, match="MAMBA_ASR_RNNT_BACKEND must be one of"):
        resolve_rnnt_backend("auto", cpu)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="runs without the interpreter"
)
def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    logits, am, lm, targets, tl, ul = make_case(2, 4, 3, 5, 0, 0)
    monkeypatch.delenv("MAMBA_ASR_RNNT_BACKEND", raising=False)
    with pytest.raises(RuntimeError, match="triton RNN-T backend"):
        rnnt_loss(logits, targets, tl, ul, backend="triton")
    with pytest.raises(RuntimeError, match="triton RNN-T backend"):
        rnnt_loss_simple(lm, am, targets, tl, ul, backend="triton")
    monkeypatch.setenv("MAMBA_ASR_RNNT_BACKEND", "triton")  # reaches every loss through "auto"
    for fn in (
        lambda: rnnt_loss(logits, targets, tl, ul),
        lambda: rnnt_loss_simple(lm, am, targets, tl, ul),
        lambda: rnnt_loss_pruned(logits[:, :, :2], targets, torch.zeros_like(logits[..., :2, 0],
                                 dtype=torch.long) + torch.arange(2), tl, ul),
    ):  # fmt: skip
        with pytest.raises(RuntimeError, match="triton RNN-T backend"):
            fn()


if __name__ == "__main__":
    print(json.dumps(errors(sys.argv[1], "cpu")))
