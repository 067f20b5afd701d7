"""``pruned_transducer_loss``: the fused triton node (one autograd node, its backward written out)
against the composite of separate ops on the torch backend, the reference: the losses, the band,
its logits, and the gradients to enc, pred and all ten weights and biases, with a loss on the
logits too (as lattice distillation puts one there). In triton's CPU interpreter (a subprocess:
triton reads TRITON_INTERPRET at import) and on CUDA in fp32 and under bf16 autocast."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers.interpreter import interpreted_json, needs_interpreter, needs_triton
from mamba_asr.ops.pruned_rnnt import (
    JoinerWeights,
    _pruned_transducer_torch,
    pruned_transducer_loss,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")

# (batch, frames, tokens, enc dim M, pred dim P, joiner J, vocab V, prune range, blank, seed)
CASES = {
    "b3_t7_u4": (3, 7, 4, 6, 5, 8, 6, 3, 0, 0),
    "b2_t9_u6_blank_last": (2, 9, 6, 5, 7, 12, 9, 4, -1, 1),
    "b4_t5_u2_full_band": (4, 5, 2, 4, 4, 8, 5, 5, 0, 2),
}


def make_case(name, device="cpu", dtype=torch.float32):
    """enc, pred (leaves), targets, lengths (ragged, one utterance without tokens where the batch
    allows), weights (pred_proj without a bias), the loss weights and a weight on the logits."""
    batch, frames, n_tok, m, p, j, v, width, blank, seed = CASES.get(name, name)
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(batch, frames, m, generator=g)
    pred = torch.randn(batch, n_tok + 1, p, generator=g)
    targets = torch.randint(0, v - 1, (batch, n_tok), generator=g)
    targets = targets + (targets >= blank % v).long()  # never the blank
    tl = torch.randint(max(1, frames // 2), frames + 1, (batch,), generator=g)
    ul = torch.randint(0, n_tok + 1, (batch,), generator=g)
    tl[0], ul[0] = frames, n_tok
    if batch > 2:
        ul[2] = 0

    def linear(n_out, n_in, bias=True):
        w = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        return w, (0.1 * torch.randn(n_out, generator=g) if bias else None)

    layers = [linear(v, m), linear(v, p), linear(j, m), linear(j, p, bias=False), linear(v, j)]
    loss_w = torch.linspace(0.5, 1.5, batch), torch.linspace(1.0, 0.2, batch)
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    leaves = [to(enc).to(dtype), to(pred).to(dtype)]
    leaves += [to(x) for pair in layers for x in pair]
    for x in leaves:
        if x is not None:
            x.requires_grad_()
    lattice = tuple(to(x) for x in (targets, tl, ul))
    return leaves, lattice, (width, blank), tuple(to(x) for x in loss_w), g


def run(name, device="cpu", backend="torch", dtype=torch.float32, autocast=False, logit_loss=True):
    """Losses, band, logits and every gradient of one case from one backend, as a dict;
    "triton-composite": the composite of separate ops on the triton kernels. logit_loss=False
    leaves the logits out of the loss (the fused node then gets None for their gradient)."""
    leaves, lattice, (width, blank), (w_pruned, w_simple), g = make_case(name, device, dtype)
    enc, pred, *flat = leaves
    weights = JoinerWeights(*zip(flat[::2], flat[1::2], strict=True))
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        if backend == "triton-composite":
            res = _pruned_transducer_torch(enc, pred, *lattice, weights, width, blank, "triton")
        else:
            res = pruned_transducer_loss(enc, pred, *lattice, weights, width, blank, backend)
    logit_w = torch.randn(res.logits.shape, generator=g).to(device)
    total = (res.pruned * w_pruned).sum() + (res.simple * w_simple).sum()
    if logit_loss:
        total = total + 0.1 * (res.logits.float() * logit_w).sum()
    names = ["enc", "pred"] + [f"{f}_{k}" for f in JoinerWeights._fields for k in ("w", "b")]
    named = [(n, x) for n, x in zip(names, leaves, strict=True) if x is not None]
    grads = torch.autograd.grad(total, [x for _, x in named])
    out = {"pruned": res.pruned, "simple": res.simple, "logits": res.logits, "ranges": res.ranges}
    out.update({f"d_{n}": d for (n, _), d in zip(named, grads, strict=True)})
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|; inf where the finite pattern differs or a has NaNs."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)) or a.isnan().any():
        return float("inf")
    f = torch.isfinite(b)
    if not f.any():
        return 0.0
    return ((a[f] - b[f]).abs().max() / b[f].abs().max().clamp_min(1e-6)).item()


def errors(
    name, device="cpu", dtype=torch.float32, autocast=False, ref_backend="torch", logit_loss=True
):
    ref = run(name, device, ref_backend, dtype, autocast, logit_loss)
    got = run(name, device, "triton", dtype, autocast, logit_loss)
    assert set(got) == set(ref)
    return {k: rel_err(got[k], ref[k]) for k in ref}


def test_torch_backend_is_the_composite_of_the_public_ops():
    """backend="torch" is rnnt_loss_simple -> prune_ranges -> band_join -> output layer ->
    rnnt_loss_pruned, written out here from the public ops."""
    from mamba_asr.ops.pruned_rnnt import (
        band_join,
        prune_ranges,
        rnnt_loss_pruned,
        rnnt_loss_simple,
    )

    leaves, (targets, tl, ul), (width, blank), _, _ = make_case("b3_t7_u4")
    enc, pred, *flat = leaves
    f = torch.nn.functional.linear
    simple = rnnt_loss_simple(f(pred, *flat[2:4]), f(enc, *flat[0:2]), targets, tl, ul, blank,
                              reduction="none")  # fmt: skip
    ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, width)
    logits = f(band_join(f(enc, *flat[4:6]), f(pred, *flat[6:8]), ranges), *flat[8:10])
    pruned = rnnt_loss_pruned(logits, targets, ranges, tl, ul, blank, reduction="none")
    got = run("b3_t7_u4")
    assert torch.equal(got["ranges"], ranges)
    for key, ref in (("pruned", pruned), ("simple", simple.loss), ("logits", logits)):
        assert torch.equal(got[key], ref), key


def test_bad_shapes_and_ranges_are_clear_errors():
    leaves, lattice, _, _, _ = make_case("b3_t7_u4")
    enc, pred, *flat = leaves
    weights = JoinerWeights(*zip(flat[::2], flat[1::2], strict=True))
    with pytest.raises(ValueError, match=r"enc must be \(B, T, M\)"):
        pruned_transducer_loss(enc[0], pred, *lattice, weights, 3)
    with pytest.raises(ValueError, match="prune_range must be >= 2"):
        pruned_transducer_loss(enc, pred, *lattice, weights, 1)
    with pytest.raises(ValueError, match="targets must be"):
        pruned_transducer_loss(enc, pred, lattice[0][:, :2], *lattice[1:], weights, 3)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("name", list(CASES))
def test_fused_triton_node_matches_the_composite_interpreted(name):
    errs = interpreted_json(__file__, name)
    assert errs["ranges"] == 0.0, errs
    assert all(e <= 1e-4 for e in errs.values()), errs


@needs_triton
@needs_interpreter
def test_fused_triton_node_under_cpu_bf16_autocast_matches_the_composite_interpreted():
    """Under autocast the fused node's backward runs its products under the forward's autocast
    state, as the linear layers' autograd would: CPU bf16 autocast in the interpreter, against
    the composite of separate ops on the same kernels."""
    errs = interpreted_json(__file__, "b2_t9_u6_blank_last", "autocast")
    assert errs["ranges"] == 0.0, errs
    assert all(e <= 2e-2 for e in errs.values()), errs


@needs_triton
@needs_interpreter
def test_fused_triton_node_without_a_loss_on_the_logits_interpreted():
    """With the logits left out of the loss, their gradient reaches the fused node as None (it
    does not materialise a (B, T, R, V) tensor of zeros) and every gradient still matches."""
    errs = interpreted_json(__file__, "b3_t7_u4", "no-logit-loss")
    assert errs.pop("logits_grad_was_none") is True, errs
    assert errs["ranges"] == 0.0, errs
    assert all(e <= 1e-4 for e in errs.values()), errs


@pytest.mark.cuda
@needs_triton
@needs_cuda
@pytest.mark.parametrize("name", list(CASES) + [(8, 120, 30, 64, 48, 96, 40, 5, 0, 9)])
def test_fused_triton_node_matches_the_composite_cuda(name):
    """fp32 against the torch backend (TF32 off: the products are exact fp32 on both sides). The
    lattices sum in different orders: on the 120-frame case (log-space sums of a few hundred over
    4000 cells) d_enc and d_simple_am_w differed by 1.5e-4 and 1.4e-4 relative on an H200, the
    rest by at most 7e-5; the small cases stay within 1e-4."""
    torch.backends.cuda.matmul.allow_tf32 = False
    errs = errors(name, "cuda")
    assert errs["ranges"] == 0.0, errs
    tol = 1e-4 if isinstance(name, str) else 5e-4
    assert all(e <= tol for e in errs.values()), errs


@pytest.mark.cuda
@needs_triton
@needs_cuda
def test_fused_triton_node_under_bf16_autocast_matches_the_composite_cuda():
    """Under bf16 autocast the linear layers run in bf16 either way: the fused node against the
    composite on the same triton kernels; the losses agree to bf16's rounding of the logits."""
    name = (8, 120, 30, 64, 48, 96, 40, 5, 0, 9)
    errs = errors(name, "cuda", autocast=True, ref_backend="triton-composite")
    assert errs["ranges"] == 0.0, errs
    assert all(e <= 2e-2 for e in errs.values()), errs


if __name__ == "__main__":
    if sys.argv[2:] == ["autocast"]:
        print(json.dumps(errors(sys.argv[1], autocast=True, ref_backend="triton-composite")))
    elif sys.argv[2:] == ["no-logit-loss"]:
        from mamba_asr.ops.pruned_rnnt import _PrunedTransducerTritonFn as Fn

        seen, backward = [], Fn._backward

        def spy(ctx, g_pruned, g_simple, g_logits):
            seen.append(g_logits is None)
            return backward(ctx, g_pruned, g_simple, g_logits)

        Fn._backward = staticmethod(spy)
        errs = errors(sys.argv[1], logit_loss=False)
        print(json.dumps({**errs, "logits_grad_was_none": seen == [True]}))
    else:
        print(json.dumps(errors(sys.argv[1])))
