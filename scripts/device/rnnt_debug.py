"""The Triton RNN-T pieces against the torch backend, piece by piece, and the band lattice's
variants (rnnt_triton.BAND_*) checked and timed; writes the fastest correct variant as JSON.

    python scripts/device/rnnt_debug.py OUT.json [B,T,U,V,R ...]
"""

import json
import sys

import torch

from mamba_asr.ops import rnnt_triton as rt
from mamba_asr.ops.pruned_rnnt import prune_ranges, rnnt_loss_pruned, rnnt_loss_simple
from mamba_asr.ops.rnnt_loss import lattice_torch

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VARIANTS = [(8, None, 1), (32, None, 0), (8, None, 0), (32, 1, 0), (32, None, 1), (32, None, 2),
            (8, None, 2), (8, 1, 2), (32, None, -1)]  # the first: the defaults  # fmt: skip


def check(B, T, U, V, R):
    g = torch.Generator(device="cpu").manual_seed(0)
    am = torch.randn(B, T, V, generator=g).to(dev).requires_grad_()
    lm = torch.randn(B, U + 1, V, generator=g).to(dev).requires_grad_()
    tg = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32).to(dev)
    tl_ = torch.full((B,), T, dtype=torch.int32, device=dev)
    ul_ = torch.full((B,), U, dtype=torch.int32, device=dev)
    tl_[1], ul_[2] = T // 2, U // 3
    res = {}
    for be in ("torch", "triton"):
        s = rnnt_loss_simple(lm, am, tg, tl_, ul_, reduction="none", backend=be)
        res[be] = s
        print(be, "simple", [round(x, 3) for x in s.loss[:4].tolist()])
    post = (res["torch"].blank_posterior, res["torch"].emit_posterior)
    ranges = prune_ranges(*post, tl_, ul_, R, backend="torch")
    r1 = prune_ranges(*post, tl_, ul_, R, backend="triton")
    print("prune ranges: frames that differ between backends", (r1 != ranges)[..., 0].sum().item())
    logits = torch.randn(B, T, ranges.shape[-1], V, generator=g).to(dev)
    lse, lpb, lpe, sym = rt.band_logprobs_triton(logits, ranges, tg, 0)
    grid = torch.full((B, T, U + 1), float("-inf"), device=dev)
    gb, ge = grid.scatter(2, ranges, lpb), grid.scatter(2, ranges, lpe)
    alpha, beta, log_p = lattice_torch(gb, ge, tl_, ul_)
    ab, bb = alpha.gather(2, ranges), beta.gather(2, ranges)
    out = {}
    for var in VARIANTS:
        rt.BAND_MIN_BLOCK, rt.BAND_STAGES, rt.BAND_SHIFT = var
        nll, pb, pe, a, b = rt.band_lattice_triton(
            lpb, lpe, ranges[:, :, 0], tl_, ul_, tables=True, u1=U + 1
        )
        fa, fb = torch.isfinite(ab), torch.isfinite(bb)
        ok_a = (
            torch.equal(fa, torch.isfinite(a))
            and (a[fa] - ab[fa]).abs().max() <= 1e-5 * ab[fa].abs().max()
        )
        ok_b = (
            torch.equal(fb, torch.isfinite(b))
            and (b[fb] - bb[fb]).abs().max() <= 1e-5 * bb[fb].abs().max()
        )
        ok_n = torch.allclose(nll, -log_p, rtol=1e-5)
        ms = float("nan")
        if dev.type == "cuda":
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            for _ in range(10):
                rt.band_lattice_triton(lpb, lpe, ranges[:, :, 0], tl_, ul_, u1=U + 1)
            en.record()
            torch.cuda.synchronize()
            ms = st.elapsed_time(en) / 10
        print(f"variant {var}: alpha ok {ok_a}, beta ok {ok_b}, nll ok {ok_n}, {ms:.3f} ms")
        if not ok_a:
            bad = (torch.isfinite(a) != fa).nonzero()
            print("  first alpha mismatches (b, t, r):", bad[:3].tolist(),
                  "s[0, :5]", ranges[0, :5, 0].tolist())  # fmt: skip
        out[var] = (ok_a and ok_b and ok_n, ms)
    rt.BAND_MIN_BLOCK, rt.BAND_STAGES, rt.BAND_SHIFT = VARIANTS[0]
    for be in ("torch", "triton"):
        x = logits.clone().requires_grad_()
        loss = rnnt_loss_pruned(x, tg, ranges, tl_, ul_, reduction="none", backend=be)
        (gx,) = torch.autograd.grad(loss.sum(), x)
        print(be, "pruned (default variant)", [round(v, 3) for v in loss[:4].tolist()])
    return out


def main():
    shapes = sys.argv[2:] or ["16,250,60,256,5", "16,500,120,1024,5"]
    found = [check(*(int(v) for v in s.split(","))) for s in shapes]
    good = [v for v in VARIANTS if all(f[v][0] for f in found)]
    best = min(good, key=lambda v: sum(f[v][1] for f in found)) if good else None
    print("correct variants:", good, "fastest:", best)
    if best is not None:
        with open(sys.argv[1], "w") as f:
            json.dump(
                dict(zip(("BAND_MIN_BLOCK", "BAND_STAGES", "BAND_SHIFT"), best, strict=True)), f
            )


if __name__ == "__main__":
    main()
