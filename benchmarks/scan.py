"""Selective scan on the CPU: the sequential reference, our backends and mambapy's pscan.

    python benchmarks/scan.py [--lengths 256 1024 4096] [--threads 2] [--json PATH]

Shapes as in Mamba blocks: B=2, D=512, N=16, with z, D, delta_bias and softplus. Times are the median
of --repeats runs after one warm-up; "saved MiB" is what autograd keeps for the backward.
mambapy (PyPI ``mambapy``) is a comparison only: pip install mambapy.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_asr.ops.selective_scan import available_backends, selective_scan_fn
from timing import RESULTS, median_ms


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """mambapy's selective scan (pscan over (B, L, D, N)), with our argument layout."""
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B, L, D)
    x = u.transpose(1, 2)
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, D, N)
    BX = (dt * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (B, L, D, N)
    hs = pscan(dA, BX)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1)  # (B, L, D)
    y = y + D * x
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def make_inputs(batch: int, dim: int, d_state: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -torch.exp(torch.log(torch.arange(1, d_state + 1.0))).repeat(dim, 1)
    tensors = dict(
        u=r(batch, dim, length), delta=r(batch, dim, length), A=A, B=r(batch, d_state, length),
        C=r(batch, d_state, length), D=torch.ones(dim), z=r(batch, dim, length),
        delta_bias=torch.rand(dim, generator=g) * -4,
    )  # fmt: skip
    return {k: v.requires_grad_() for k, v in tensors.items()}


def run_impl(name: str, inputs: dict, backward: bool):
    kwargs = {k: (v if backward else v.detach()) for k, v in inputs.items()}
    if name == "mambapy":
        out = mambapy_scan(**kwargs)
    else:
        out = selective_scan_fn(**kwargs, delta_softplus=True, backend=name)
    if backward:
        out.backward(torch.ones_like(out))
        for v in inputs.values():
            v.grad = None
    return out


def time_impl(name: str, inputs: dict, backward: bool, repeats: int) -> float:
    run_impl(name, inputs, backward)  # warm-up (compiles the native kernel on first use)

    def run() -> None:
        with torch.set_grad_enabled(backward):
            run_impl(name, inputs, backward)

    return median_ms(run, repeats, warmup=0)


def saved_mib(name: str, inputs: dict) -> float:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if name == "mambapy":
            mambapy_scan(**inputs)
        else:
            selective_scan_fn(**inputs, delta_softplus=True, backend=name)
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--impls", nargs="+", default=None)
    p.add_argument("--json", type=Path, default=RESULTS / "scan.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    impls = args.impls or ["ref", *[b for b in available_backends("cpu") if b != "ref"]]
    try:
        import mambapy  # noqa: F401

        if args.impls is None:
            impls.append("mambapy")
    except ImportError:
        print("mambapy not installed: skipping it (pip install mambapy)", file=sys.stderr)

    print(f"# python benchmarks/scan.py --lengths {' '.join(map(str, args.lengths))} "
          f"--threads {args.threads}")  # fmt: skip
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, B={args.batch} D={args.dim} N={args.d_state}")  # fmt: skip
    header = (
        "| impl | L | fwd ms | fwd+bwd ms | saved MiB | ref/impl fwd+bwd | mambapy/impl fwd+bwd |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.dim, args.d_state, length)
        res = {}
        for name in impls:
            reps = args.ref_repeats if name == "ref" else args.repeats
            res[name] = dict(
                impl=name, L=length, fwd_ms=time_impl(name, inputs, False, reps),
                fwd_bwd_ms=time_impl(name, inputs, True, reps), saved_mib=saved_mib(name, inputs),
            )  # fmt: skip
        for name, r in res.items():
            r["speedup_vs_ref"] = (
                res["ref"]["fwd_bwd_ms"] / r["fwd_bwd_ms"] if "ref" in res else None
            )
            r["speedup_vs_mambapy"] = (
                res["mambapy"]["fwd_bwd_ms"] / r["fwd_bwd_ms"] if "mambapy" in res else None
            )
            fmt = lambda x: "-" if x is None else f"{x:.1f}x"  # noqa: E731
            print(f"| {name} | {length} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                  f"{r['saved_mib']:.1f} | {fmt(r['speedup_vs_ref'])} | "
                  f"{fmt(r['speedup_vs_mambapy'])} |")  # fmt: skip
            rows.append(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        batch=args.batch, dim=args.dim, d_state=args.d_state, threads=args.threads,
        torch=torch.__version__, machine=platform.machine(), processor=platform.processor(),
    )  # fmt: skip
    args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
