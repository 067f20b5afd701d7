"""The reshuffles around BiMamba's fused scan (ops.directions): each result written once (PyTorch
ops, "torch"; Triton kernels, one a pass, "triton", where triton runs) against the composites of
PyTorch ops (transposes, masked_fill, gather, cat; "ref"), alone and in a whole block.

    python benchmarks/bidirectional.py --device cuda [--dtypes bfloat16 float32] [--json PATH]
    python benchmarks/bidirectional.py --device cpu --batch 2 --length 500 --dtypes float32

Shapes of the large ConMamba encoder at 60 s (1500 frames after subsampling, 1024 channels a
direction, d_model 512), batch --batch, every utterance but the first 10% shorter (so the
per-utterance reversal is in play). ``ops``: split_directions + merge_directions;
``block``: a BiMamba block (in_proj, conv, scan, out_proj around them), the module's defaults
otherwise; its "ref" is the block as it was before (the composites, in_proj called as a module
on (B, L, M) rather than as W x^T). For each, forward and forward+backward: milliseconds (median of --iters; CUDA events on
the GPU, wall clock on the CPU) and MiB written by the call's operators (each operator's output
bytes, views and allocations not counted; the scan's own writes inside its kernels are not
operators; a Triton kernel's writes are not operators either, so "triton" MiB counts only what
is around them). "ref/X" > 1: X is faster or writes less. Writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import mamba_asr.modules.mamba as mamba_module
from mamba_asr.modules.mamba import BiMamba
from mamba_asr.modules.masks import length_mask, reverse_index
from mamba_asr.ops import directions
from mamba_asr.ops.selective_scan.dispatch import triton_runs_on
from timing import RESULTS, BytesWritten, device_ms


def _backend(name: str):
    return (functools.partial(directions.split_directions, backend=name),
            functools.partial(directions.merge_directions, backend=name))  # fmt: skip


def _split_ref(xz, mask=None, index=None, frames=None):
    """The composites' split, its outputs then zero-padded to ``frames`` (as BiMamba's padded
    pass asks, ``modules.mamba.scan_frames``): the same frames for every implementation."""
    x2, z2 = directions.split_directions_ref(xz, mask, index)
    extra = 0 if frames is None else frames - x2.shape[-1]
    return (x2, z2) if extra <= 0 else (F.pad(x2, (0, extra)), F.pad(z2, (0, extra)))


def _merge_ref(y2, index=None, length=None):
    """The composites' merge of the first ``length`` frames."""
    return directions.merge_directions_ref(y2 if length is None else y2[..., :length], index)


IMPLS = {
    "ref": (_split_ref, _merge_ref),
    "torch": _backend("torch"),
    "triton": _backend("triton"),
}


_CHANNELS_FIRST = BiMamba._in_proj_channels_first


def use(impl: str) -> None:
    """Point BiMamba at one implementation of the reshuffles: "ref" is the block as it was
    before them (the composites, in_proj called as a module)."""
    mamba_module.split_directions, mamba_module.merge_directions = IMPLS[impl]
    BiMamba._in_proj_channels_first = (
        _CHANNELS_FIRST if impl != "ref" else (lambda self, x: self.in_proj(x))
    )


def batch_masks(batch: int, length: int, device: str):
    lengths = torch.full((batch,), length, device=device)
    lengths[1:] = int(length * 0.9)
    return lengths, length_mask(lengths, length, device), reverse_index(lengths, length, device)


def ops_call(impl: str, batch: int, length: int, d: int, dtype, device: str, backward: bool):
    split, merge = IMPLS[impl]
    _lengths, mask, index = batch_masks(batch, length, device)
    xz = torch.randn(batch, length, 2 * d, device=device, dtype=dtype, requires_grad=True)
    gx, gz = (torch.randn(batch, 2 * d, length, device=device, dtype=dtype) for _ in range(2))
    gout = torch.randn(batch, length, d, device=device, dtype=dtype)

    def call():
        x2, z2 = split(xz, mask, index)
        out = merge(x2 * 0.5 + z2, index)  # stands in for the scan between them
        if backward:
            torch.autograd.backward((x2, z2, out), (gx, gz, gout))

    return call


def block_call(impl: str, batch: int, length: int, d_model: int, dtype, device: str,
               backward: bool):  # fmt: skip
    torch.manual_seed(0)
    block = BiMamba(d_model, device=device)
    lengths, _mask, _index = batch_masks(batch, length, device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    autocast = dtype != torch.float32

    def call():
        use(impl)
        with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
            y = block(x, lengths)
        if backward:
            y.float().square().mean().backward()

    return call


def mib_written(fn) -> float:
    fn()
    with BytesWritten() as w:
        fn()
    return w.total / 2**20


def tiles(args) -> None:
    """The Triton ops (forward+backward) with each of args.tiles, beside the default tile."""
    from mamba_asr.ops import directions_triton as dt

    default = (dt.BC, dt.BT, dt.WARPS)
    print("| tile (channels x frames x warps) | dtype | ops fwd+bwd ms |")
    print("|---|---|---|")
    try:
        for tile in ["x".join(map(str, default)), *args.tiles]:
            dt.BC, dt.BT, dt.WARPS = (int(v) for v in tile.split("x"))
            for dtype_name in args.dtypes:
                fn = ops_call("triton", args.batch, args.length, 2 * args.d_model,
                              getattr(torch, dtype_name), args.device, True)  # fmt: skip
                print(f"| {tile} | {dtype_name} | {device_ms(fn, args.device, args.iters):.3f} |")
    finally:
        dt.BC, dt.BT, dt.WARPS = default


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=1500)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--parts", nargs="+", default=["ops", "block"], choices=["ops", "block"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--tiles", nargs="*", default=[], metavar="CxTxW",
                   help="also time the Triton ops with these tiles (channels x frames x warps)")  # fmt: skip
    p.add_argument("--json", type=Path, default=RESULTS / "bidirectional.json")
    args = p.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# python benchmarks/bidirectional.py --device {args.device} ({name}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads), batch {args.batch}, "
          f"{args.length} frames, d_model {args.d_model}")  # fmt: skip
    impls = [i for i in IMPLS if i != "triton" or triton_runs_on(torch.device(args.device))]
    head = " | ".join(f"{i} ms" for i in impls) + " | " + " | ".join(f"{i} MiB" for i in impls)
    ratios = " | ".join(f"ref/{i}" for i in impls[1:])
    print(f"| part | dtype | pass | {head} | {ratios} (time) |")
    print("|---|---|---|" + "---|" * (3 * len(impls) - 1))
    rows = []
    make = {"ops": ops_call, "block": block_call}
    width = {"ops": 2 * args.d_model, "block": args.d_model}  # d_inner = expand 2 x d_model
    try:
        for part, dtype_name, backward in itertools.product(args.parts, args.dtypes, (False, True)):
            dtype = getattr(torch, dtype_name)
            res = {}
            for impl in impls:
                fn = make[part](impl, args.batch, args.length, width[part], dtype, args.device,
                                backward)  # fmt: skip
                res[impl] = (device_ms(fn, args.device, args.iters), mib_written(fn))
            step = "fwd+bwd" if backward else "fwd"
            ms = " | ".join(f"{res[i][0]:.2f}" for i in impls)
            mib = " | ".join(f"{res[i][1]:.0f}" for i in impls)
            ratio = " | ".join(f"{res['ref'][0] / res[i][0]:.2f}x" for i in impls[1:])
            print(f"| {part} | {dtype_name} | {step} | {ms} | {mib} | {ratio} |", flush=True)
            rows.append(dict(part=part, dtype=dtype_name, step=step,
                             **{f"{i}_ms": res[i][0] for i in impls},
                             **{f"{i}_mib": res[i][1] for i in impls}))  # fmt: skip
        if args.tiles:
            tiles(args)
    finally:  # the defaults back
        mamba_module.split_directions = directions.split_directions
        mamba_module.merge_directions = directions.merge_directions
        BiMamba._in_proj_channels_first = _CHANNELS_FIRST
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(device=name, batch=args.batch, length=args.length,
                                         d_model=args.d_model, rows=rows), indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
