"""What each part of the scan's backward costs on the GPU, by taking it out, and where the host's
time goes in one forward+backward call.

    PYTHONPATH=src:benchmarks:scripts/device python3 scripts/device/scan_ablate.py [--out DIR]
        [--ablate] [--trace] [--iters 20]

--ablate: the time-parallel kernels' (CONFIG kernel=time) summed GPU time (torch.profiler) per
forward+backward at the anchors' shapes, with copies of ``ops/selective_scan/triton_time.py`` in
which one part of the backward is removed or changed (the copies are written beside the output and imported from there;
each edit must match the source once, or the script stops). Removing a part gives wrong gradients:
these times only say what that part costs, never what a kernel could do. Variants that keep the
results right (CONFIG overrides) are timed the same way.

--trace: torch.profiler traces (CPU and CUDA, the Python stack) of ours and the peer's
forward+backward, as the benchmark calls them (benchmarks/scan_cuda.py's runner), written as
chrome traces (.json.xz, for chrome://tracing or Perfetto: when each kernel is launched in a
call), with the host's median time a call under the profiler and the operators that take the
most host time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import statistics
import sys
import time
from pathlib import Path

import torch

from mamba_asr.ops.selective_scan import triton_kernel as tk
from mamba_asr.ops.selective_scan import triton_time
from scan_cuda import make_inputs, runner
from timing import gpu_kernels

# name -> [(old, new)] edits of triton_time.py's source
EDITS: dict[str, list[tuple[str, str]]] = {
    "no_dBdC_atomics": [
        (
            "                tl.atomic_add(dB_ptr + bc0 + n * L + t, tl.sum(dhs * dtu, axis=0), mask=mt & ok,\n"
            '                              sem="relaxed")  # fmt: skip\n'
            "                tl.atomic_add(dC_ptr + bc0 + n * L + t, tl.sum(hs * g, axis=0), mask=mt & ok,\n"
            '                              sem="relaxed")  # fmt: skip\n',
            "",
        )
    ],
    "dBdC_stores": [
        (
            "                tl.atomic_add(dB_ptr + bc0 + n * L + t, tl.sum(dhs * dtu, axis=0), mask=mt & ok,\n"
            '                              sem="relaxed")  # fmt: skip\n'
            "                tl.atomic_add(dC_ptr + bc0 + n * L + t, tl.sum(hs * g, axis=0), mask=mt & ok,\n"
            '                              sem="relaxed")  # fmt: skip\n',
            "                tl.store(dB_ptr + bc0 + n * L + t, tl.sum(dhs * dtu, axis=0), mask=mt & ok)\n"
            "                tl.store(dC_ptr + bc0 + n * L + t, tl.sum(hs * g, axis=0), mask=mt & ok)\n",
        )
    ],
    "no_dA": [
        (
            "                dA_t = tl.sum(dlog * dt, axis=1)\n"
            '                tl.atomic_add(dA_ptr + offs_d * N + n, dA_t, mask=md & ok, sem="relaxed")\n',
            "",
        )
    ],
    "no_adjoint_scan": [
        (
            "                dhs_r = _scan_from(a_nx_r, gc_r, dh1, offs_t, CARRY_IN)  # steps reversed\n",
            "                dhs_r = gc_r + a_nx_r * dh1[:, None]\n",
        )
    ],
    "no_recompute_scan": [
        (
            "                hs = _scan_from(a, x, h0, offs_t, CARRY_IN)  # h_t\n",
            "                hs = x + a * h0[:, None]\n",
        )
    ],
}
EDITS["no_atomics"] = EDITS["no_dBdC_atomics"] + EDITS["no_dA"]


# name -> CONFIG overrides (results stay right)
CONFIGS: dict[str, dict] = {
    "bd4w4": {"time_bd": 4, "time_warps": 4},
    "carry_in": {"time_carry_in": True},
}

SHAPES = [(8, 1024, 512), (8, 1024, 2048), (4, 1024, 8192)]


def variant_module(name: str, edits: list[tuple[str, str]], where: Path):
    src = Path(triton_time.__file__).read_text()
    for old, new in edits:
        if src.count(old) != 1:
            raise SystemExit(f"{name}: an edit matches {src.count(old)} times, not once:\n{old}")
        src = src.replace(old, new)
    path = where / f"scan_variant_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"scan_variant_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def ablate(out: Path, iters: int) -> None:
    mods = {"base": triton_time}
    mods.update({n: variant_module(n, e, out) for n, e in EDITS.items()})
    names = [*mods, *CONFIGS]
    rows = []
    print("| dtype | B | L | variant | fwd kernel ms | bwd kernel ms | bwd / base |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for batch, dim, length in SHAPES:
            inputs = make_inputs(batch, dim, length, dtype)
            base_bwd = None
            for name in names:
                mod = mods.get(name, triton_time)
                saved = dict(tk.CONFIG)
                tk.CONFIG.update({"kernel": "time", **CONFIGS.get(name, {})})  # time kernels

                def call(mod=mod, i=inputs):
                    o, _last = mod.TritonTimeScan.apply(i["u"], i["delta"], i["A"], i["B"], i["C"],
                                                        i["D"], i["z"], i["delta_bias"], None,
                                                        True)  # fmt: skip
                    o.backward(torch.ones_like(o))

                try:
                    ks = gpu_kernels(call, iters, warmup=2)
                finally:
                    tk.CONFIG.clear()
                    tk.CONFIG.update(saved)
                fwd = sum(v for k, v in ks.items() if k in ("_fwd_time_kernel", "fwd_seq_kernel"))
                bwd = sum(v for k, v in ks.items() if k in ("_bwd_time_kernel", "bwd_seq_kernel"))
                base_bwd = bwd if name == "base" else base_bwd
                rows.append({"dtype": str(dtype).split(".")[1], "batch": batch, "length": length,
                             "variant": name, "fwd_ms": fwd, "bwd_ms": bwd})  # fmt: skip
                print(f"| {rows[-1]['dtype']} | {batch} | {length} | {name} | {fwd:.3f} | "
                      f"{bwd:.3f} | {bwd / base_bwd:.2f} |", flush=True)  # fmt: skip
            for v in inputs.values():
                v.grad = None
    (out / "scan_ablate.json").write_text(json.dumps(rows, indent=1))


def trace(out: Path, iters: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    impls = ["triton"]
    peer_fn = None
    try:
        import peer_scan

        peer_fn = peer_scan.load()
        impls.append("peer")
    except Exception as e:  # noqa: BLE001 - the trace of ours is still worth having
        print(f"# no peer: {e}")
    for dtype in (torch.bfloat16, torch.float32):
        for length in (512, 2048):
            inputs = make_inputs(8, 1024, length, dtype)
            for impl in impls:
                call = runner(impl, peer_fn, inputs, True)
                for _ in range(5):
                    call()
                torch.cuda.synchronize()
                walls = []
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                             with_stack=True) as prof:  # fmt: skip
                    for _ in range(min(iters, 10)):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        call()
                        walls.append((time.perf_counter() - t0) * 1e3)
                    torch.cuda.synchronize()
                tag = f"{impl}_{str(dtype).split('.')[1]}_L{length}"
                path = out / f"trace_{tag}.json"
                prof.export_chrome_trace(str(path))
                path.with_suffix(".json.xz").write_bytes(lzma.compress(path.read_bytes()))
                path.unlink()
                print(f"## {tag}: host ms per call under the profiler (median) "
                      f"{statistics.median(walls):.3f}")  # fmt: skip
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
                print(table, flush=True)
                for v in inputs.values():
                    v.grad = None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/scan_ablate"))
    p.add_argument("--ablate", action="store_true")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.ablate:
        ablate(args.out, args.iters)
    if args.trace:
        trace(args.out, args.iters)


if __name__ == "__main__":
    main()
