"""Selective scan on an NVIDIA GPU: our Triton kernels and chunked path beside the peer CUDA kernel.

    python benchmarks/scan_cuda.py [--impls triton peer] [--peer DIR] [--peer-build DIR]
        [--variant NAME=JSON ...] [--sweep] [--json PATH]

Shapes and inputs as in ../shared/anchors.md: z, D, delta_bias, delta_softplus=True, N=16, A/D/bias
fp32; u/delta/z/B/C in the row's dtype. Times: median of --iters CUDA-event timings after warm-up.
"fwd GB/s" counts the minimum bytes (inputs read once, output written once). --peer points at the
peer folder (state-spaces/mamba's kernel: a prebuilt selective_scan_cuda.so in --peer-build is
imported, else it is built there, about 160 s; scripts/device/peer_scan.py) for side-by-side timing.
--variant times the Triton kernels again with CONFIG entries overridden, as one more impl
(e.g. ``bd16='{"block_d": 16}'``); --sweep times launch settings on the middle shapes first.
--shapes B,D,L[,G] times other shapes (G groups of B and C: ConMamba's fused BiMamba has 2);
--rounds R times each impl R times in turn, the order reversed every other round, and reports
the medians (a slow spell of the GPU's host then falls on every impl alike); --gpu adds the
summed kernel time of a forward and of a forward+backward, the host left out, and the peer's
over each impl's. A forward+backward takes the inputs' gradients from a gradient of ones made once
(``torch.autograd.grad``, nothing summed into ``.grad``); --accumulate times
``out.backward(torch.ones_like(out))`` instead, as this benchmark did before 2026-12-06.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import triton

from mamba_asr.ops.selective_scan import selective_scan_fn
from mamba_asr.ops.selective_scan import triton_kernel as tk
from timing import RESULTS, event_ms, gpu_kernels, in_turn

SHAPES = [(8, 1024, 512), (8, 1024, 2048), (4, 1024, 8192)]


def make_inputs(batch, dim, length, dtype, d_state=16, groups=1):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    A = -torch.arange(1, d_state + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
    bc = (batch, d_state, length) if groups == 1 else (batch, groups, d_state, length)
    t = dict(
        u=r(batch, dim, length), delta=r(batch, dim, length), A=A, B=r(*bc), C=r(*bc),
        D=torch.ones(dim, device="cuda"), z=r(batch, dim, length),
        delta_bias=torch.rand(dim, device="cuda") * -4,
    )  # fmt: skip
    return {k: v.requires_grad_() for k, v in t.items()}


def min_bytes(batch, dim, length, dtype, d_state=16):
    e = torch.tensor([], dtype=dtype).element_size()
    return (4 * batch * dim * length + 2 * batch * d_state * length) * e


VARIANTS: dict[str, dict] = {}  # impl name -> CONFIG overrides (--variant)


ACCUMULATE = False  # --accumulate: the backward through .backward(), summed into each .grad


def runner(impl, peer_fn, inputs, backward):
    """A call of ``impl`` on ``inputs``: the forward, and with ``backward`` its backward from a
    gradient of ones made once. The backward gives the inputs' gradients (``torch.autograd.grad``)
    without adding them into ``.grad``: in a model u, delta and z are activations whose gradients
    flow on, and a trainer sets a parameter's ``.grad`` to None before the step, so neither pays
    the three elementwise sums (u, delta, z: about 0.03 ms at B8 D1024 L512 in bf16) that
    ``.backward()`` on leaf inputs adds, nor the fill of a fresh gradient each call. With
    ``ACCUMULATE`` (--accumulate) it is ``out.backward(torch.ones_like(out))`` as before."""
    ones = {}  # the gradient of ones, made by the first (untimed, warm-up) call
    leaves = [v for v in inputs.values() if v.requires_grad]

    def grads(out):
        if ACCUMULATE:
            out.backward(torch.ones_like(out))
            return
        if "g" not in ones:
            ones["g"] = torch.ones_like(out)
        torch.autograd.grad(out, leaves, ones["g"])

    def call():
        kw = {k: (v if backward else v.detach()) for k, v in inputs.items()}
        if impl in VARIANTS:
            saved = dict(tk.CONFIG)
            tk.CONFIG.update(VARIANTS[impl])
            try:
                out = selective_scan_fn(**kw, delta_softplus=True, backend="triton")
                if backward:
                    grads(out)
            finally:
                tk.CONFIG.clear()
                tk.CONFIG.update(saved)
            return
        if impl == "peer":
            out = peer_fn(**kw, delta_softplus=True)
        elif impl == "triton-f32in":  # half inputs cast to fp32 before the kernel (experiment)
            kw = {
                k: (v.float() if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()
            }
            out = selective_scan_fn(**kw, delta_softplus=True, backend="triton")
        else:
            out = selective_scan_fn(**kw, delta_softplus=True, backend=impl)
        if backward:
            grads(out)

    return call


def peer_over(res: dict, row: dict, key: str) -> float | None:
    """The peer's ``key`` time over the row's (above 1: the row's impl is faster); None without
    the peer or that time."""
    return res["peer"][key] / row[key] if "peer" in res and row[key] else None


def peak_extra_mib(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def sweep(iters):
    """Time Triton launch settings at B8 D1024 L2048 (fp32 and bf16 summed); keep the best."""
    inputs = [make_inputs(8, 1024, 2048, dt) for dt in (torch.float32, torch.bfloat16)]
    base = dict(tk.CONFIG)
    rows = []

    def trial(**cfg):
        tk.CONFIG.clear()
        tk.CONFIG.update({**base, **cfg})
        try:
            ms = sum(event_ms(runner("triton", None, x, True), iters) for x in inputs)
            rows.append((ms, dict(tk.CONFIG)))
        except Exception as e:  # out of resources for this setting
            print(f"# sweep {cfg}: {type(e).__name__}: {str(e)[:200]}")

    for bd, fw, bw in ((4, 1, 1), (8, 1, 1), (16, 1, 1), (16, 2, 2), (32, 1, 1), (32, 4, 4)):
        trial(block_d=bd, fwd_warps=fw, bwd_warps=bw)
    best = min(rows, key=lambda r: r[0])[1]
    for chunk, bwd_chunk, ckpt in ((4, 4, 8), (8, 4, 2), (8, 4, 8), (8, 8, 4), (16, 4, 2)):
        trial(**{**best, "chunk": chunk, "bwd_chunk": bwd_chunk, "ckpt_chunks": ckpt})
    for ms, cfg in sorted(rows, key=lambda r: r[0])[:8]:
        print(f"# sweep fwd+bwd fp32+bf16 {ms:.3f} ms  {cfg}")
    best = min(rows, key=lambda r: r[0])[1]
    tk.CONFIG.clear()
    tk.CONFIG.update(best)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", type=Path, default=None)
    p.add_argument("--peer-build", type=Path, default=Path(".peer/build"))
    p.add_argument(
        "--variant", nargs="*", default=[], help="NAME=JSON: CONFIG overrides, as an impl"
    )
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--impls", nargs="+", default=["triton", "chunked", "peer"])
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="B,D,L[,G]",
        help="shapes other than the anchors' (G: groups of B and C)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time the impls this many times each, in turn (the order reversed every "
        "other round), and report each one's median",
    )
    p.add_argument("--gpu", action="store_true",
                   help="also the summed kernel time of a forward and of a forward+backward "
                        "(torch.profiler)")  # fmt: skip
    p.add_argument("--accumulate", action="store_true",
                   help="the backward as out.backward(ones_like(out)), summed into each input's "
                        ".grad (the harness before 2026-12-06), not torch.autograd.grad")  # fmt: skip
    p.add_argument("--json", type=Path, default=RESULTS / "scan_cuda.json")
    args = p.parse_args(argv)
    global ACCUMULATE
    ACCUMULATE = args.accumulate
    peer_fn = None
    if args.peer is not None and "peer" in args.impls:
        os.environ.setdefault("PEER_DIR", str(args.peer))
        os.environ.setdefault("PEER_BUILD", str(args.peer_build))
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "device"))
        import peer_scan  # the peer's kernel, benchmark only

        peer_fn = peer_scan.load()
    for v in args.variant:
        name, cfg = v.split("=", 1)
        VARIANTS[name] = json.loads(cfg)
    impls = [i for i in args.impls if i != "peer" or peer_fn is not None] + list(VARIANTS)
    if args.sweep:
        print(f"# best triton config: {sweep(max(10, args.iters // 5))}")
    name = torch.cuda.get_device_name()
    cmd = " ".join(
        ["python benchmarks/scan_cuda.py", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"# {cmd}  ({name}, torch {torch.__version__}, triton {triton.__version__})")
    print(f"# triton CONFIG {tk.CONFIG}")
    print("# backward: " + ("out.backward(ones), summed into .grad" if ACCUMULATE
                            else "torch.autograd.grad(out, inputs, ones), no .grad"))  # fmt: skip
    gpu_col = (" gpu fwd ms | gpu fwd+bwd ms | peer/impl gpu fwd | peer/impl gpu fwd+bwd |"
               if args.gpu else "")  # fmt: skip
    print(
        "| impl | dtype | B | D | L | fwd ms | fwd+bwd ms | fwd GB/s | extra MiB | peer/impl fwd | "
        f"peer/impl fwd+bwd |{gpu_col}"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" * 4 if args.gpu else ""))
    rows = []
    dtypes = [getattr(torch, d) for d in args.dtypes]
    shapes = SHAPES if args.shapes is None else [tuple(map(int, s.split(","))) for s in args.shapes]
    for dtype, shape in itertools.product(dtypes, shapes):
        batch, dim, length = shape[:3]
        groups = shape[3] if len(shape) > 3 else 1
        inputs = make_inputs(batch, dim, length, dtype, groups=groups)
        times: dict[str, list] = {impl: [] for impl in impls}
        failed = set()
        for impl in in_turn(impls, args.rounds):
            if impl in failed:
                continue
            try:
                times[impl].append((
                    event_ms(runner(impl, peer_fn, inputs, False), args.iters),
                    event_ms(runner(impl, peer_fn, inputs, True), args.iters),
                ))  # fmt: skip
            except Exception as e:  # a variant out of resources: its row is left out
                print(f"# {impl} {dtype} {shape}: {type(e).__name__}: {str(e)[:200]}")
                failed.add(impl)
        res = {}
        for impl in impls:
            if impl in failed:
                continue
            fwd = statistics.median(t[0] for t in times[impl])
            both = statistics.median(t[1] for t in times[impl])
            call = runner(impl, peer_fn, inputs, True)
            mem = peak_extra_mib(call)
            gbs = min_bytes(batch, dim, length, dtype) / fwd / 1e6
            res[impl] = dict(impl=impl, dtype=str(dtype).split(".")[1], B=batch, D=dim, L=length,
                             G=groups, fwd_ms=fwd, fwd_bwd_ms=both, fwd_gbs=gbs, extra_mib=mem,
                             gpu_fwd_ms=None, gpu_fwd_bwd_ms=None)  # fmt: skip
            if args.gpu:  # each kernel's ms too (gpu_*_kernels: name -> ms), the sums in the table
                for key, c in (("gpu_fwd", runner(impl, peer_fn, inputs, False)),
                               ("gpu_fwd_bwd", call)):  # fmt: skip
                    kernels = gpu_kernels(c, 10)
                    res[impl].update(
                        {f"{key}_ms": sum(kernels.values()), f"{key}_kernels": kernels}
                    )
        for impl, r in res.items():
            pf, pb = peer_over(res, r, "fwd_ms"), peer_over(res, r, "fwd_bwd_ms")
            gf, gb = peer_over(res, r, "gpu_fwd_ms"), peer_over(res, r, "gpu_fwd_bwd_ms")
            r.update(peer_over_impl_fwd=pf, peer_over_impl_fwd_bwd=pb, peer_over_impl_gpu_fwd=gf,
                     peer_over_impl_gpu_fwd_bwd=gb)  # fmt: skip
            f = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
            gpu = (f" {r['gpu_fwd_ms']:.3f} | {r['gpu_fwd_bwd_ms']:.3f} | {f(gf)} | {f(gb)} |"
                   if args.gpu else "")  # fmt: skip
            print(f"| {impl} | {r['dtype']} | {batch} | {dim} | {length} | {r['fwd_ms']:.3f} | "
                  f"{r['fwd_bwd_ms']:.3f} | {r['fwd_gbs']:.0f} | {r['extra_mib']:.0f} | {f(pf)} | "
                  f"{f(pb)} |{gpu}", flush=True)  # fmt: skip
            rows.append(r)
    if args.gpu:  # where each row's GPU time goes, kernel by kernel
        print(
            "\n| impl | dtype | L | pass | kernel ms (the largest first) |\n|---|---|---|---|---|"
        )
        for r in rows:
            for key in ("gpu_fwd", "gpu_fwd_bwd"):
                top = sorted(r[f"{key}_kernels"].items(), key=lambda kv: -kv[1])
                text = "; ".join(f"{k[:48]} {v:.4f}" for k, v in top)
                print(f"| {r['impl']} | {r['dtype']} | {r['L']} | {key[4:]} | {text} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(device=name, command=cmd, config=tk.CONFIG, variants=VARIANTS,
                                         accumulate=ACCUMULATE, rows=rows), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
