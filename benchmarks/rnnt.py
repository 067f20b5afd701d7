"""RNN-T loss, forward+backward: ours (full and pruned, pure PyTorch) beside torchaudio's kernel.

    python benchmarks/rnnt.py --device cuda     # shapes of ../shared/anchors.md
    python benchmarks/rnnt.py --device cpu --shapes 4,100,30,64
    python benchmarks/rnnt.py --device cuda --rnnt-backend torch triton   # both recursions

--rnnt-backend picks the alpha / beta recursions of ours and pruned (``backend=`` of the losses):
"torch" rows are named ours / pruned, "triton" rows ours-triton / pruned-triton.

What each row times (median of --repeats; CUDA events synchronize around each step on the GPU):
  ours, torchaudio  full losses: the (B, T, U+1, V) joiner logits are the input (the joiner that
                    made them is not timed); forward+backward of the loss to the logits.
  pruned            everything from the joiner's inputs, enc (B, T, J) and pred (B, U+1, J):
                    simple heads (J -> V) + simple loss + prune ranges (width --prune-range) +
                    joiner projections (J -> J), the hidden layer tanh(enc + pred) on the band,
                    output Linear (J -> V) on the band + pruned loss, forward+backward to enc,
                    pred and the heads' weights, as the transducer trains:
                    ``pruned_transducer_loss`` (on the triton backend one autograd node).
  pruned-band       the same steps as separate modules and ops, one autograd node each (the
                    hidden layer ``band_join``: one kernel each way on the triton backend).
  pruned-gather     pruned-band with the hidden layer made as before ``band_join``: pred gathered
                    onto the band (``do_rnnt_pruning``), added, tanh (3 kernels each way).
  torchaudio-joiner the same joiner (projections, tanh, output Linear) on the whole (B, T, U+1)
                    grid, then torchaudio's loss, forward+backward to enc, pred and the joiner's
                    weights: what a training step's loss costs with torchaudio, to compare with
                    pruned (k2's published comparison timed torchaudio's backward into the
                    joiner too). Its time is given as a ratio to every row in a second column.
"extra GiB": the peak memory beyond the inputs (and weights) during forward+backward: CUDA's
allocator peak on the GPU; on the CPU the peak resident memory sampled every 0.2 ms (glibc set
to give freed blocks of >= 128 KiB back at once), so approximate. The pruned loss value is of its own random joiner, not comparable.
Writes benchmarks/results/rnnt_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from mamba_asr.ops.pruned_rnnt import (
    JoinerWeights,
    band_join,
    do_rnnt_pruning,
    prune_ranges,
    pruned_transducer_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)
from mamba_asr.ops.rnnt_loss import rnnt_loss
from timing import RESULTS, cuda_peak_gib, median_ms


def lattice_inputs(batch, frames, labels, vocab, device, gen):
    targets = torch.randint(1, vocab, (batch, labels), generator=gen, dtype=torch.int32).to(device)
    logit_lengths = torch.full((batch,), frames, dtype=torch.int32, device=device)
    target_lengths = torch.full((batch,), labels, dtype=torch.int32, device=device)
    return targets, logit_lengths, target_lengths


def full_case(loss_fn, batch, frames, labels, vocab, device):
    """A step on random logits (B, T, U+1, V): the input, allocated before the measurement."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=gen).to(device)
    args = (logits.requires_grad_(), *lattice_inputs(batch, frames, labels, vocab, device, gen))

    def step() -> torch.Tensor:
        logits.grad = None
        loss = loss_fn(*args)
        loss.backward()
        return loss.detach()

    return step, lambda: setattr(logits, "grad", None)


class BandJoiner(nn.Module):
    """Simple heads and the joiner of a transducer with enc and pred of width J."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.simple_am, self.simple_lm = nn.Linear(dim, vocab), nn.Linear(dim, vocab)
        self.enc_proj, self.pred_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def loss(self, enc, pred, targets, logit_lengths, target_lengths, prune_range, backend,
             join="fused", mark=None):  # fmt: skip
        """pruned + 0.5 * simple, mean over the batch; join: "fused" (``pruned_transducer_loss``
        on the five layers' weights), or the steps one by one with the hidden layer on the band
        made by "band" (``band_join``) or "gather" (``do_rnnt_pruning``, add, tanh). mark:
        called with each phase's name when it is done (scripts/device/rnnt_host.py times them)."""
        mark = mark or (lambda name: None)
        if join == "fused":
            layers = (self.simple_am, self.simple_lm, self.enc_proj, self.pred_proj, self.out)
            res = pruned_transducer_loss(
                enc, pred, targets, logit_lengths, target_lengths,
                JoinerWeights.of(*layers), prune_range,
                backend=backend,
            )  # fmt: skip
            mark("pruned_transducer_loss (one node)")
            loss = (res.pruned + 0.5 * res.simple).mean()
            mark("sum and mean")
            return loss
        lm, am = self.simple_lm(pred), self.simple_am(enc)
        mark("simple heads (2 Linear)")
        simple = rnnt_loss_simple(lm, am, targets, logit_lengths, target_lengths,
                                  reduction="none", backend=backend)  # fmt: skip
        mark("simple loss (Function)")
        ranges = prune_ranges(
            simple.blank_posterior, simple.emit_posterior, logit_lengths, target_lengths,
            prune_range,
        )  # fmt: skip
        mark("prune_ranges")
        ep, pp = self.enc_proj(enc), self.pred_proj(pred)
        mark("joiner projections (2 Linear)")
        if join == "band":
            hidden = band_join(ep, pp, ranges, backend=backend)
            mark("band_join (Function)")
        else:
            band = do_rnnt_pruning(ep, pp, ranges)
            hidden = torch.tanh(band.am + band.lm)
            mark("gather, add, tanh")
        logits = self.out(hidden)  # (B, T, R, V)
        mark("output Linear")
        pruned = rnnt_loss_pruned(
            logits, targets, ranges, logit_lengths, target_lengths, reduction="none",
            backend=backend,
        )  # fmt: skip
        mark("pruned loss (Function)")
        loss = (pruned + 0.5 * simple.loss).mean()
        mark("sum and mean")
        return loss


def joiner_inputs(batch, frames, labels, vocab, device, dim):
    """Random enc (B, T, J) and pred (B, U+1, J), the lattice's inputs, the heads of width J,
    and a function clearing every gradient."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    enc = torch.randn(batch, frames, dim, generator=gen).to(device).requires_grad_()
    pred = torch.randn(batch, labels + 1, dim, generator=gen).to(device).requires_grad_()
    lattice = lattice_inputs(batch, frames, labels, vocab, device, gen)
    torch.manual_seed(0)
    heads = BandJoiner(dim, vocab).to(device)
    leaves = [enc, pred, *heads.parameters()]

    def clear() -> None:
        for x in leaves:
            x.grad = None

    return enc, pred, lattice, heads, clear


def pruned_case(batch, frames, labels, vocab, device, dim, prune_range, backend="torch",
                join="fused"):  # fmt: skip
    """A step from random enc (B, T, J) and pred (B, U+1, J) through heads of width J."""
    enc, pred, lattice, heads, clear = joiner_inputs(batch, frames, labels, vocab, device, dim)

    def step() -> torch.Tensor:
        clear()
        loss = heads.loss(enc, pred, *lattice, prune_range, backend, join)
        loss.backward()
        return loss.detach()

    return step, clear


def joiner_case(loss_fn, batch, frames, labels, vocab, device, dim):
    """torchaudio's loss after the joiner of ``pruned_case`` on the full grid, from the same
    random enc (B, T, J) and pred (B, U+1, J)."""
    enc, pred, lattice, heads, clear = joiner_inputs(batch, frames, labels, vocab, device, dim)

    def step() -> torch.Tensor:
        clear()
        grid = heads.enc_proj(enc).unsqueeze(2) + heads.pred_proj(pred).unsqueeze(1)
        loss = loss_fn(heads.out(torch.tanh(grid)), *lattice)
        loss.backward()
        return loss.detach()

    return step, clear


def impls(names, backends=("torch",)):
    """name -> (loss function of the full logits, or "fused" / "band" / "gather" for the pruned
    path made that way, recursion backend); ours, pruned, pruned-band and pruned-gather once per
    backend, "-triton" appended to the names of the triton ones."""
    found, base = {}, {}
    for backend in backends:
        sfx = "" if backend == "torch" else f"-{backend}"
        full = lambda *a, be=backend: rnnt_loss(*a, blank=0, reduction="mean", backend=be)  # noqa: E731
        for name, fn in (("ours", full), ("pruned", "fused"), ("pruned-band", "band"),
                         ("pruned-gather", "gather")):  # fmt: skip
            found[name + sfx], base[name + sfx] = (fn, backend), name
    if {"torchaudio", "torchaudio-joiner"} & set(names):
        try:
            import torchaudio.functional as AF

            found["torchaudio"] = (lambda *a: AF.rnnt_loss(*a, blank=0, reduction="mean"), None)
            if "torchaudio-joiner" in names:
                found["torchaudio-joiner"] = (found["torchaudio"][0], "joiner")
        except ImportError:
            print("# torchaudio not installed: ours only")
    return {k: v for k, v in found.items() if base.get(k, k) in names}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def return_freed_memory() -> None:
    """glibc: serve blocks >= 128 KiB by mmap and unmap them on free, so that the resident
    memory follows torch's tensors (no adaptive threshold that keeps freed blocks)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def cpu_peak_extra(step: Callable[[], torch.Tensor]) -> float | None:
    """Peak resident memory above the start during one step, sampled every 0.2 ms (Linux)."""
    try:
        base = rss_bytes()
    except (OSError, ValueError):
        return None
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(2e-4)

    thread = threading.Thread(target=sample)
    thread.start()
    step()
    done.set()
    thread.join()
    return (peak[0] - base) / 2**30


def measure(step, clear, device, repeats):
    ms = median_ms(step, repeats, device)
    clear()
    extra = cuda_peak_gib(step, device) if device.type == "cuda" else cpu_peak_extra(step)
    return ms, extra, step().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="+", default=None, help="B,T,U,V ...")
    p.add_argument("--impls", nargs="+", default=["ours", "torchaudio", "pruned"])
    p.add_argument(
        "--rnnt-backend", nargs="+", default=["torch"], choices=["torch", "triton"],
        help="recursions of ours and pruned; several: one row each",
    )  # fmt: skip
    p.add_argument("--prune-range", type=int, default=5)
    p.add_argument("--joiner-dim", type=int, default=512, help="J of the pruned path")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        return_freed_memory()
    shapes = args.shapes or (
        ["16,250,60,256", "16,500,120,1024"] if device.type == "cuda" else ["4,100,30,64"]
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# python benchmarks/rnnt.py --device {args.device} --shapes {' '.join(shapes)} "
          f"--impls {' '.join(args.impls)} --rnnt-backend {' '.join(args.rnnt_backend)} "
          f"--prune-range {args.prune_range} "
          f"--joiner-dim {args.joiner_dim}" + (f" --threads {args.threads}" if args.threads else ""))  # fmt: skip
    print(f"# {name}, torch {torch.__version__}, fp32; pruned: J={args.joiner_dim}, "
          "includes simple heads, pruning and the joiner on the band")  # fmt: skip
    print("| impl | B | T | U | V | fwd+bwd ms | extra GiB | loss | torchaudio/impl time "
          "| impl/torchaudio memory | torchaudio-joiner/impl time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        b, t, u, v = (int(x) for x in shape.split(","))
        res = {}
        for impl, (fn, backend) in impls(args.impls, args.rnnt_backend).items():
            pruned = fn in ("fused", "band", "gather")
            if pruned:
                case = pruned_case(b, t, u, v, device, args.joiner_dim, args.prune_range, backend,
                                   fn)  # fmt: skip
            elif backend == "joiner":
                case = joiner_case(fn, b, t, u, v, device, args.joiner_dim)
            else:
                case = full_case(fn, b, t, u, v, device)
            ms, extra, value = measure(*case, device, args.repeats)
            del case
            res[impl] = dict(impl=impl, B=b, T=t, U=u, V=v, ms=ms, extra_gib=extra, loss=value)
            if backend not in (None, "joiner"):
                res[impl]["rnnt_backend"] = backend
            if pruned or backend == "joiner":
                res[impl].update(prune_range=args.prune_range, joiner_dim=args.joiner_dim)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ta, tj = res.get("torchaudio"), res.get("torchaudio-joiner")
        for r in res.values():
            tr = ta["ms"] / r["ms"] if ta else None
            jr = tj["ms"] / r["ms"] if tj else None
            mr = r["extra_gib"] / ta["extra_gib"] if ta and ta["extra_gib"] else None
            f = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
            print(f"| {r['impl']} | {b} | {t} | {u} | {v} | {r['ms']:.2f} | {f(r['extra_gib'], '.3f')} "
                  f"| {r['loss']:.4f} | {f(tr, '.2f')}x | {f(mr, '.2f')}x | {f(jr, '.2f')}x |",
                  flush=True)  # fmt: skip
            rows.append(r)
    out = RESULTS / f"rnnt_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
