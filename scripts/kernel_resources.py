"""What the selective-scan kernels cost on an NVIDIA GPU, without one: registers, spills, instructions.

    python scripts/kernel_resources.py [--arch 90] [--dtypes fp32 bf16] [--set KEY=VALUE ...]

Compiles the Triton kernels of ``ops/selective_scan`` (the default layout's and the time-parallel
ones) for an sm_XX target on any machine (triton's bundled ptxas; no driver), then reads the
cubin with the bundled ``cuobjdump`` and ``nvdisasm``: registers a thread, stack bytes (spills),
instructions, shuffles, barriers and MUFU (exp2/log2) instructions in the code. Registers bound
how many warps fit on an SM (65536 registers: 64 a thread allow 32 one-warp programs, the most an
SM takes); the instruction mix says what a change costs before a GPU runs it. Integer arguments
are taken as multiples of 16 (triton specializes them so when they are, as at the benchmark's
shapes; other lengths get other layouts). --set overrides entries of the kernels' CONFIG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HALF_ARGS = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr",
             "ddelta_ptr", "dz_ptr", "ypre_ptr")  # fmt: skip


def ptr_types(name: str, dtype: str) -> dict:
    """The pointer types kernel ``name`` (as ``scan_kernels`` names it) is launched with for
    inputs of ``dtype``: the half arguments in it, B and C in fp32 where CONFIG casts them for
    the lanes forward (``lanes_bc_fp32``; "both": for the backward too)."""
    from mamba_asr.ops.selective_scan import triton_kernel as tk

    types = {n: "*" + dtype for n in HALF_ARGS}
    if (name == "lanes fwd" and tk.CONFIG["lanes_bc_fp32"]) or (
        name == "lanes bwd" and tk.CONFIG["lanes_bc_fp32"] == "both"
    ):
        types.update(B_ptr="*fp32", C_ptr="*fp32")
    return types


def compile_for(fn, consts: dict, ptr_types: dict, arch: int = 90, num_warps: int = 1,
                num_stages: int = 2, aligned: tuple = ("L", "D", "E", "n_chunks", "n_ckpt"),
                ones: tuple = ("G",), maxnreg: int | None = None):  # fmt: skip
    """Compile a @triton.jit function for sm_<arch> without a GPU: pointers fp32 unless named in
    ptr_types, the other arguments i32, ``aligned`` ones and every pointer divisible by 16, and
    ``ones`` the constant 1 (triton specializes an int argument equal to 1 so; the anchors' shapes
    have one group of B/C and 4-64 chunks)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {**{n: 1 for n in ones if n in fn.arg_names}, **consts}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ptr_types.get(name, "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name in aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
    if getattr(fn, "is_gluon", lambda: False)():  # a gluon kernel (gluon_seq.py)
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    opts = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        opts["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def config_maxnreg(name: str) -> int | None:
    """The register cap CONFIG sets for kernel ``name`` (as ``scan_kernels`` names it), as the
    scan's host code launches it; None where there is none."""
    from mamba_asr.ops.selective_scan import triton_kernel as tk

    key = {"time bwd": "time_bwd_maxnreg", "lanes fwd": "lanes_fwd_maxnreg",
           "lanes bwd": "lanes_bwd_maxnreg", "seq bwd": "seq_bwd_maxnreg"}.get(name)  # fmt: skip
    return None if key is None else tk.CONFIG[key]


def resources(kernel) -> dict:
    """Registers, stack bytes and the instruction mix of a compiled kernel's cubin."""
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", cubin],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        sass = subprocess.run([tools / "nvdisasm", "-c", cubin], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    ops = re.findall(r"/\*[0-9a-f]{4,6}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass)
    return {
        "inner_loop": inner_loop(sass),
        "registers": int(m[1]),
        "stack_bytes": int(m[2]),
        "instructions": len(ops),
        "shuffles": sum(o == "SHFL" for o in ops),
        "barriers": sum(o == "BAR" for o in ops),
        "mufu": sum(o == "MUFU" for o in ops),
        "layout_conversions": kernel.asm["ttgir"].count("convert_layout"),
    }


def inner_loop(sass: str) -> int:
    """Instructions in the innermost loop's body (the shortest stretch that ends in a branch back
    to an earlier label): what a step of the loop over states costs, where the static count of the
    whole kernel also holds its prologue and the loop's first steps."""
    labels, count, best = {}, 0, 0
    for line in sass.splitlines():
        label = re.match(r"^\s*(\.L_x_\d+):", line)
        if label:
            labels[label[1]] = count
            continue
        inst = re.search(r"/\*[0-9a-f]{4,6}\*/\s+(.*);", line)
        if not inst:
            continue
        count += 1
        target = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", inst[1])
        if target and target[1] in labels and count - labels[target[1]] > 1:
            size = count - labels[target[1]]
            best = size if best == 0 else min(best, size)
    return best


def scan_kernels(dtype: str, d_state: int = 16) -> list[tuple[str, object, dict, int, int]]:
    """(name, kernel, constexprs, warps, stages) of the scan's kernels as CONFIG launches them, with z, D,
    delta_bias and softplus (the anchors' inputs)."""
    from mamba_asr.ops.selective_scan import triton_kernel as tk
    from mamba_asr.ops.selective_scan import triton_time as tt

    cfg = tk.CONFIG
    common = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
                  ROUND_GATE=dtype != "fp32" and bool(cfg["round_gate"]), FAST=True)  # fmt: skip
    chunk, bwd_chunk, every = tk._steps()
    bn = 1 << (d_state - 1).bit_length()
    state = dict(common, HAS_H0=False, BD=cfg["block_d"], BN=bn)
    time = dict(
        common,
        HAS_H0=False,
        N=d_state,
        BD=cfg["time_bd"],
        TC=cfg["time_chunk"],
        NU=cfg["time_unroll"],
        BATCH_FAST=cfg["time_batch_fast"],
        CARRY_IN=cfg["time_carry_in"],
    )
    import torch

    from mamba_asr.ops.selective_scan import gluon_seq, triton_lanes

    half = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    lanes_t = cfg["lanes_time"]  # the backward's lanes along time, the forward's checkpoints
    lanes = dict(common, HAS_H0=False, N=d_state, BD=cfg["time_bd"], K=cfg["lanes_k"],
                 BATCH_FAST=cfg["time_batch_fast"])  # fmt: skip
    lanes_bwd = dict(lanes, TL=lanes_t, BD=tt._lanes_bwd_block(cfg["time_bd"], lanes_t))
    pf = cfg["lanes_prefetch"]

    seq = []
    block, bwd = tt.seq_blocks(d_state, 1024)  # the anchors' 1024 channels
    if block is not None:
        seq_consts = dict(common, HAS_H0=False, SAVE_Y=True, N=d_state, T=cfg["seq_chunk"],
                          TC=cfg["time_chunk"], W=block[0], PREFETCH=cfg["seq_prefetch"])  # fmt: skip
        seq = [("seq fwd", gluon_seq.fwd_seq_kernel, seq_consts, block[0], 1)]
        if bwd is not None:
            bwd_consts = dict(common, HAS_H0=False, HAS_DLAST=False, N=d_state,
                              T=cfg["seq_chunk"], W=bwd[0], PREFETCH=cfg["seq_prefetch"])  # fmt: skip
            seq.append(("seq bwd", gluon_seq.bwd_seq_kernel, bwd_consts, bwd[0], 1))
    return [
        ("state fwd", tk._fwd_kernel, dict(state, T=chunk, S=every // chunk), cfg["fwd_warps"],
         cfg["fwd_stages"]),
        ("state bwd", tk._bwd_kernel,
         dict(state, HAS_DLAST=False, T=bwd_chunk, S=every // bwd_chunk, SPLIT=False),
         cfg["bwd_warps"], cfg["bwd_stages"]),
        ("time fwd", tt._fwd_time_kernel,
         dict(time, SAVE_Y=True, PREFETCH=cfg["time_prefetch"]), cfg["time_warps"],
         cfg["time_stages"]),
        ("time bwd", tt._bwd_time_kernel,
         dict(time, HAS_DLAST=False, PREFETCH=tt._BWD_PREFETCH[cfg["time_bwd_prefetch"]]),
         cfg["time_warps"], cfg["time_stages"]),
        ("lanes fwd", triton_lanes._fwd_lanes_kernel,
         dict(lanes, SAVE_Y=True, NU=tt._lanes_unroll(False), PREFETCH=pf in (True, "fwd"),
              CK=lanes_t, HELD=tt._lanes_fwd_held(lanes_t, d_state),
              WHOLE=cfg["lanes_fwd_whole"]),
         cfg["time_warps"], cfg["time_stages"]),
        ("lanes bwd", triton_lanes._bwd_lanes_kernel,
         dict(lanes_bwd, HAS_DLAST=False, NU=tt._lanes_unroll(True),
              PREFETCH=tt._lanes_bwd_prefetch(), WHOLE=cfg["lanes_bwd_whole"],
              DA_LOG=tt._lanes_da_log(lanes_t, d_state), HELD=tt._lanes_held(lanes_t, d_state),
              BITS=tt._lanes_bc_bits(half, half, 16, lanes_t),  # L: a multiple of 16
              IV32=tt._lanes_iv32(), SHIFT=tt._lanes_shift(lanes_t, d_state)),
         cfg["time_warps"], cfg["time_stages"]),
        *seq,
    ]  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="sm_XX (90: H100/H200)")
    p.add_argument(
        "--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"]
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="CONFIG overrides, VALUE as JSON")  # fmt: skip
    p.add_argument(
        "--length-unaligned",
        action="store_true",
        help="L (and the chunk count) not a multiple of 16, as at 750 or 1500 frames",
    )
    p.add_argument(
        "--groups",
        type=int,
        default=1,
        help="groups of B and C (ConMamba's fused BiMamba: 2; 1 is specialized)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    aligned = ("D", "E") if args.length_unaligned else ("L", "D", "E", "n_chunks", "n_ckpt")
    ones = ("G",) if args.groups == 1 else ()
    from mamba_asr.ops.selective_scan import triton_kernel as tk

    for item in args.set:
        key, _, value = item.partition("=")
        if key not in tk.CONFIG:
            raise SystemExit(f"--set: unknown CONFIG key {key!r}; known: {sorted(tk.CONFIG)}")
        tk.CONFIG[key] = json.loads(value)
    rows = []
    print(f"# sm_{args.arch}, CONFIG {tk.CONFIG}, aligned {aligned}, groups {args.groups}")
    print(
        "| kernel | dtype | registers | stack B | instructions | inner loop | SHFL | BAR | MUFU | "
        "layout conversions |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for name, fn, consts, warps, stages in scan_kernels(dtype):
            types = ptr_types(name, dtype)
            maxnreg = config_maxnreg(name)
            r = resources(
                compile_for(
                    fn, consts, types, args.arch, warps, stages, aligned, ones, maxnreg=maxnreg
                )
            )
            rows.append({"kernel": name, "dtype": dtype, **r})
            print(f"| {name} | {dtype} | {r['registers']} | {r['stack_bytes']} | "
                  f"{r['instructions']} | {r['inner_loop']} | {r['shuffles']} | {r['barriers']} | "
                  f"{r['mufu']} | "
                  f"{r['layout_conversions']} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "config": tk.CONFIG, "rows": rows},
                                        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
