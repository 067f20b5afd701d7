"""Where the pruned RNN-T loss's time goes on the GPU: per-kernel CUDA time (torch.profiler) of one
forward+backward step of benchmarks/rnnt.py's pruned path, the number of launches, the step's wall
time, and the lattice recursions alone.

    python scripts/device/rnnt_profile.py [--shapes B,T,U,V ...] [--backend triton]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from rnnt import pruned_case  # noqa: E402
from timing import event_ms  # noqa: E402


def wall_ms(fn, n=20):
    for _ in range(3):
        fn()
    out = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def kernel_table(fn, steps=3, top=25, cpu=0):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    tot = collections.Counter()
    cnt = collections.Counter()
    for e in prof.events():
        if e.device_type.name == "CUDA":
            tot[e.name] += (
                e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            )
            cnt[e.name] += 1
    all_us = sum(tot.values()) / steps
    n = sum(cnt.values()) / steps
    print(f"  kernels per step: {n:.0f}, summed kernel time {all_us / 1e3:.3f} ms")
    for name, us in tot.most_common(top):
        print(f"  {us / steps / 1e3:8.3f} ms {cnt[name] / steps:5.0f}x  {name[:110]}")
    if cpu:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=cpu))


def lattice_times(b, t, u, dev):
    """The lattice kernels alone on random (B, T, U + 1) grids, and the band ones (R = 5)."""
    from mamba_asr.ops import rnnt_triton as rt

    g = torch.Generator(device="cuda").manual_seed(0)
    lp_b = -torch.rand(b, t, u + 1, device=dev, generator=g) * 3
    lp_e = -torch.rand(b, t, u + 1, device=dev, generator=g) * 3
    tl_ = torch.full((b,), t, device=dev, dtype=torch.int32)
    ul_ = torch.full((b,), u, device=dev, dtype=torch.int32)
    ms = event_ms(lambda: rt.lattice_triton(lp_b, lp_e, tl_, ul_))
    print(f"  lattice_triton alone (U+1={u + 1}): {ms:.3f} ms (alpha + beta, one launch)")
    warps = rt._warps
    for w in (1, 2, 4, 8):
        rt._warps = lambda block, w=w: w
        ms = event_ms(lambda: rt.lattice_posteriors_triton(lp_b, lp_e, tl_, ul_))
        print(f"  lattice + posteriors, {w} warps: {ms:.3f} ms")
    rt._warps = warps
    width = 5
    s = torch.sort(torch.randint(0, u - width + 2, (b, t), device=dev, generator=g), 1).values
    s[:, 0] = 0
    bb, be = lp_b[:, :, :width].contiguous(), lp_e[:, :, :width].contiguous()
    ms = event_ms(lambda: rt.band_lattice_triton(bb, be, s, tl_, ul_))
    print(f"  band lattice + posteriors (R={width}): {ms:.3f} ms")


def torchaudio_times(b, t, u, v, dev):
    try:
        import torchaudio.functional as AF
    except ImportError:
        return
    logits = torch.randn(b, t, u + 1, v, device=dev, requires_grad=True)
    tg = torch.randint(1, v, (b, u), device=dev, dtype=torch.int32)
    tl_ = torch.full((b,), t, device=dev, dtype=torch.int32)
    ul_ = torch.full((b,), u, device=dev, dtype=torch.int32)

    def ta():
        logits.grad = None
        AF.rnnt_loss(logits, tg, tl_, ul_, blank=0, reduction="mean").backward()

    print(f"  torchaudio: wall {wall_ms(ta):.3f} ms, events {event_ms(ta):.3f} ms")
    kernel_table(ta, top=6)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["16,250,60,256", "16,500,120,1024"])
    p.add_argument("--backend", default="triton")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__)
    for shape in args.shapes:
        b, t, u, v = (int(x) for x in shape.split(","))
        step, _clear = pruned_case(b, t, u, v, dev, 512, 5, args.backend)
        print(
            f"# pruned B{b} T{t} U{u} V{v}: wall {wall_ms(step):.3f} ms, events {event_ms(step):.3f} ms"
        )
        kernel_table(step, cpu=25)
        del step, _clear
        lattice_times(b, t, u, dev)
        torchaudio_times(b, t, u, v, dev)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
