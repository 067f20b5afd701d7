"""split_directions / merge_directions against their composites (outputs and gradients, with and
without padding, fp32 and bf16), the composites against a per-utterance loop, and the argument
checks; the Triton kernels the same way, in triton's CPU interpreter and on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.interpreter import interpreted_json, needs_interpreter, needs_triton
from mamba_asr.modules.masks import length_mask, reverse_index
from mamba_asr.ops import directions
from mamba_asr.ops.directions import (
    merge_directions,
    merge_directions_ref,
    resolve_backend,
    split_directions,
    split_directions_ref,
)

# (batch, length, channels of one direction, lengths or None, dtype)
CASES = [
    (1, 9, 3, None, torch.float32),
    (3, 17, 5, [17, 9, 1], torch.float32),
    (2, 40, 8, [33, 40], torch.bfloat16),
    (4, 6, 2, None, torch.bfloat16),
]
IDS = [f"b{c[0]}-l{c[1]}-d{c[2]}-{'pad' if c[3] else 'full'}-{str(c[4])[6:]}" for c in CASES]


def _masks(lengths, batch, length):
    if lengths is None:
        return None, None
    lens = torch.tensor(lengths)
    return length_mask(lens, length, lens.device), reverse_index(lens, length, lens.device)


def _loop_split(xz, lengths):
    """Each utterance alone: its valid frames reversed, padding left in place (zero in x)."""
    batch, length, two_d = xz.shape
    d = two_d // 2
    x2, z2 = torch.zeros(batch, two_d, length), torch.zeros(batch, two_d, length)
    for b in range(batch):
        n = length if lengths is None else lengths[b]
        x, z = xz[b, :, :d].T.float(), xz[b, :, d:].T.float()  # (D, L)
        x2[b, :d, :n], x2[b, d:, :n] = x[:, :n], x[:, :n].flip(-1)
        z2[b, :d], z2[b, d:] = z, z
        z2[b, d:, :n] = z[:, :n].flip(-1)
    return x2, z2


@pytest.mark.parametrize("batch, length, d, lengths, dtype", CASES, ids=IDS)
def test_reference_split_is_the_per_utterance_loop(batch, length, d, lengths, dtype):
    xz = torch.randn(batch, length, 2 * d, generator=torch.Generator().manual_seed(d)).to(dtype)
    mask, index = _masks(lengths, batch, length)
    x2, z2 = split_directions_ref(xz, mask, index)
    want_x, want_z = _loop_split(xz, lengths)
    assert torch.equal(x2.float(), want_x) and torch.equal(z2.float(), want_z)


@pytest.mark.parametrize("batch, length, d, lengths, dtype", CASES, ids=IDS)
def test_split_matches_reference_values_and_gradients(batch, length, d, lengths, dtype):
    g = torch.Generator().manual_seed(batch * 100 + length)
    xz = torch.randn(batch, length, 2 * d, generator=g).to(dtype)
    gx, gz = (torch.randn(batch, 2 * d, length, generator=g).to(dtype) for _ in range(2))
    mask, index = _masks(lengths, batch, length)
    results = []
    for fn in (split_directions, split_directions_ref):
        leaf = xz.clone().requires_grad_()
        x2, z2 = fn(leaf, mask, index)
        assert x2.is_contiguous() and z2.is_contiguous() and x2.dtype == dtype
        ((x2.float() * gx).sum() + (z2.float() * gz).sum()).backward()
        results.append((x2, z2, leaf.grad))
    # pure data movement: equal to the bit, the gradient's two adds included
    for got, want in zip(results[0], results[1], strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("which", ["x", "z"])
def test_split_gradient_of_one_output_only(which):
    xz = torch.randn(2, 7, 6)
    mask, index = _masks([7, 4], 2, 7)
    grads = []
    for fn in (split_directions, split_directions_ref):
        leaf = xz.clone().requires_grad_()
        x2, z2 = fn(leaf, mask, index)
        ((x2 if which == "x" else z2) * torch.arange(84.0).view(2, 6, 7)).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    d = 3
    unused = grads[0][..., d:] if which == "x" else grads[0][..., :d]
    assert not unused.any()


@pytest.mark.parametrize("batch, length, d, lengths, dtype", CASES, ids=IDS)
def test_merge_matches_reference_values_and_gradients(batch, length, d, lengths, dtype):
    g = torch.Generator().manual_seed(batch * 7 + d)
    y2 = torch.randn(batch, 2 * d, length, generator=g).to(dtype)
    gout = torch.randn(batch, length, d, generator=g).to(dtype)
    _mask, index = _masks(lengths, batch, length)
    results = []
    for fn in (merge_directions, merge_directions_ref):
        leaf = y2.clone().requires_grad_()
        out = fn(leaf, index)
        assert out.shape == (batch, length, d) and out.is_contiguous() and out.dtype == dtype
        (out.float() * gout).sum().backward()
        results.append((out, leaf.grad))
    (out, grad), (out_ref, grad_ref) = results
    # a + (b - a) / 2 against (a + b) / 2: equal in bf16 (computed in fp32, rounded once), within
    # one rounding in fp32
    if dtype == torch.bfloat16:
        assert torch.equal(out, out_ref)
    else:
        torch.testing.assert_close(out, out_ref, rtol=2e-7, atol=1e-7)
    assert torch.equal(grad, grad_ref)


def test_reference_merge_is_the_average_per_utterance():
    y2 = torch.randn(2, 4, 5)
    lengths = [5, 3]
    _mask, index = _masks(lengths, 2, 5)
    out = merge_directions_ref(y2, index)
    for b, n in enumerate(lengths):
        back = y2[b, 2:].clone()
        back[:, :n] = back[:, :n].flip(-1)
        torch.testing.assert_close(out[b], ((y2[b, :2] + back) / 2).T)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="xz"):
        split_directions(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="mask"):
        split_directions(torch.randn(2, 5, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="index"):
        split_directions(torch.randn(2, 5, 4), None, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="y2"):
        merge_directions(torch.randn(2, 3, 5))


def test_split_of_a_channel_first_layout_keeps_it_in_the_gradient():
    """xz as a (B, L, 2D) view of a (2D, B, L) product (BiMamba's in_proj): the same values and
    gradient as from a contiguous xz, and the gradient in xz's own layout."""
    batch, length, d = 3, 10, 4
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2 * d, batch, length, generator=g)
    gx, gz = (torch.randn(batch, 2 * d, length, generator=g) for _ in range(2))
    mask, index = _masks([10, 7, 3], batch, length)
    results = []
    for layout in ("channel-first", "contiguous"):
        leaf = base.clone().requires_grad_()
        xz = leaf.permute(1, 2, 0)
        if layout == "contiguous":
            xz = xz.contiguous()
        x2, z2 = split_directions(xz, mask, index)
        ((x2 * gx).sum() + (z2 * gz).sum()).backward()
        results.append((x2, z2, leaf.grad))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
    leaf = base.clone().requires_grad_()
    xz = leaf.permute(1, 2, 0)
    grads = {}
    xz.register_hook(lambda grad: grads.setdefault("xz", grad))
    x2, _z2 = split_directions(xz, mask, index)
    x2.sum().backward()
    assert grads["xz"].stride() == xz.stride()


@pytest.mark.parametrize("backend", ["torch", "composite"])
def test_frames_past_the_length_are_zero_and_left_out_of_the_merge(backend, monkeypatch):
    """split(frames=F > L): the results' first L frames as without, zeros after; merge(length=L)
    of a (B, 2D, F) input: its first L frames merged. Gradients as of the unpadded ops."""
    if backend == "composite":
        monkeypatch.setattr(directions, "_composite", lambda: True)
    g = torch.Generator().manual_seed(11)
    batch, length, d, frames = 3, 13, 4, 32
    mask, index = _masks([13, 9, 5], batch, length)
    xz = torch.randn(batch, length, 2 * d, generator=g)
    y2 = torch.randn(batch, 2 * d, frames, generator=g)
    gx, gz = (torch.randn(batch, 2 * d, frames, generator=g) for _ in "xz")
    gout = torch.randn(batch, length, d, generator=g)
    kw = {"backend": "torch"} if backend == "torch" else {}
    results = []
    for pad in (frames, None):
        leaf, ly = xz.clone().requires_grad_(), y2.clone().requires_grad_()
        x2, z2 = split_directions(leaf, mask, index, frames=pad, **kw)
        out = merge_directions(ly if pad else ly[..., :length], index, length=length, **kw)
        if pad:
            assert x2.shape == z2.shape == (batch, 2 * d, frames)
            assert not x2[..., length:].any() and not z2[..., length:].any()
            x2, z2 = x2[..., :length], z2[..., :length]
        loss = (x2 * gx[..., :length]).sum() + (z2 * gz[..., :length]).sum() + (out * gout).sum()
        loss.backward()
        results.append((x2, z2, out, leaf.grad, ly.grad))
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="frames"):
        split_directions(xz, mask, index, frames=length - 1, **kw)
    with pytest.raises(ValueError, match="length"):
        merge_directions(y2, index, length=frames + 1, **kw)


def test_backend_choice(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(directions.BACKEND_ENV, raising=False)
    monkeypatch.setattr(directions, "triton_runs_on", lambda device: device.type == "cuda")
    assert resolve_backend(None, cuda) == "triton"
    assert resolve_backend(None, cpu) == "torch"
    assert resolve_backend("torch", cuda) == "torch"
    monkeypatch.setenv(directions.BACKEND_ENV, "torch")
    assert resolve_backend(None, cuda) == "torch"
    monkeypatch.setenv(directions.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(None, cuda)
    with pytest.raises(ValueError, match="need triton and CUDA"):
        resolve_backend("triton", cpu)


def _same(got: torch.Tensor, want: torch.Tensor, exact: bool) -> bool:
    """Equal to the bit; where not ``exact``, bf16 within one unit in the last place (triton's CPU
    interpreter truncates fp32 to bf16 where the GPU rounds to nearest even)."""
    if exact or got.dtype != torch.bfloat16:
        return torch.equal(got, want)
    return torch.allclose(got.float(), want.float(), rtol=2**-7, atol=0.0)


def triton_mismatches(device: str, exact: bool = True) -> list[str]:
    """Every case where the Triton kernels' outputs or gradients differ from the composites' (see
    ``_same``; they round once, as the composites' ops do): padded and full batches, fp32 and
    bf16, xz contiguous and as BiMamba's channel-first view, a gradient through one output only."""
    bad = []
    extra = [(3, 130, 40, [130, 77, 64], torch.bfloat16), (2, 0, 3, None, torch.float32)]
    for batch, length, d, lengths, dtype in CASES + extra:
        g = torch.Generator().manual_seed(batch * 31 + length)
        mask, index = _masks(lengths, batch, length)
        if mask is not None:
            mask, index = mask.to(device), index.to(device)
        base = torch.randn(2 * d, batch, length, generator=g).to(device, dtype)
        gx, gz = (torch.randn(batch, 2 * d, length, generator=g).to(device, dtype) for _ in "xz")
        y2 = torch.randn(batch, 2 * d, length, generator=g).to(device, dtype)
        gout = torch.randn(batch, length, d, generator=g).to(device, dtype)
        for layout in ("contiguous", "channel-first"):
            for used in ("both", "x", "z"):
                results = []
                for backend in ("triton", "ref"):
                    leaf = base.clone().requires_grad_()
                    xz = leaf.permute(1, 2, 0)
                    if layout == "contiguous":
                        xz = xz.contiguous()
                    if backend == "ref":
                        x2, z2 = split_directions_ref(xz, mask, index)
                    else:
                        x2, z2 = split_directions(xz, mask, index, backend="triton")
                    loss = (x2.float() * gx).sum() * (used != "z")
                    loss = loss + (z2.float() * gz).sum() * (used != "x")
                    loss.backward()
                    results.append((x2, z2, leaf.grad))
                for name, got, want in zip(("x2", "z2", "dxz"), *results, strict=True):
                    if not _same(got, want, exact):
                        bad.append(f"split {name} {layout} {used} {batch, length, d, dtype}")
        # rows padded past the length (frames a multiple of 16), as BiMamba asks for on CUDA
        frames = -(-length // 16) * 16 + 16
        results = []
        for backend in ("triton", "ref"):
            leaf = base.clone().requires_grad_()
            leaf_y = torch.nn.functional.pad(y2, (0, frames - length)).requires_grad_()
            xz = leaf.permute(1, 2, 0)
            if backend == "ref":
                x2, z2 = (torch.nn.functional.pad(t, (0, frames - length))
                          for t in split_directions_ref(xz, mask, index))  # fmt: skip
                out = merge_directions_ref(leaf_y[..., :length], index)
            else:
                x2, z2 = split_directions(xz, mask, index, backend="triton", frames=frames)
                out = merge_directions(leaf_y, index, backend="triton", length=length)
            ((x2.float() * torch.nn.functional.pad(gx, (0, frames - length))).sum()
             + (z2.float() * torch.nn.functional.pad(gz, (0, frames - length))).sum()
             + (out.float() * gout).sum()).backward()  # fmt: skip
            results.append((x2, z2, out, leaf.grad, leaf_y.grad))
        for name, got, want in zip(("x2", "z2", "out", "dxz", "dy2"), *results, strict=True):
            if not _same(got, want, exact):
                bad.append(f"padded to {frames} {name} {batch, length, d, dtype}")
        results = []
        for fn in (merge_directions, merge_directions_ref):
            leaf = y2.clone().requires_grad_()
            kw = {"backend": "triton"} if fn is merge_directions else {}
            out = fn(leaf, index, **kw)
            (out.float() * gout).sum().backward()
            results.append((out, leaf.grad))
        for name, got, want in zip(("out", "dy2"), *results, strict=True):
            if not (_same(got, want, exact) and got.is_contiguous()):
                bad.append(f"merge {name} {batch, length, d, dtype}")
    return bad


@needs_interpreter
@needs_triton
def test_triton_interpreted_matches_reference():
    assert interpreted_json(__file__) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_triton_cuda_matches_reference():
    assert triton_mismatches("cuda") == []


if __name__ == "__main__":  # the interpreted run of the test above
    print(json.dumps(triton_mismatches("cpu", exact=False)))
