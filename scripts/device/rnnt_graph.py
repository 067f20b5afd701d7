"""How much of the pruned RNN-T step is host time: the step of benchmarks/rnnt.py (pruned,
triton backend: heads, simple loss, pruning, band joiner, pruned loss, forward + backward)
timed as it runs, then captured once as a CUDA graph (torch.cuda.graph) and replayed, beside
torchaudio's loss on ready logits. Checks that the replayed step gives the eager step's loss.

    python scripts/device/rnnt_graph.py [--shapes B,T,U,V ...] [--repeats 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from rnnt import full_case, pruned_case  # noqa: E402
from timing import median_ms  # noqa: E402


def graphed(step):
    """A CUDA graph of step(): warm-up on a side stream, capture, and a replaying function
    returning the captured loss tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay():
        graph.replay()
        return out

    return replay


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", default=["16,250,60,256", "16,500,120,1024"])
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, fp32")
    print("| B | T | U | V | pruned eager ms | pruned graph ms | torchaudio ms | torchaudio/eager | "
          "torchaudio/graph | same loss |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        import torchaudio.functional as AF

        ta_fn = lambda *a: AF.rnnt_loss(*a, blank=0, reduction="mean")  # noqa: E731
    except ImportError:
        ta_fn = None
    for shape in args.shapes:
        b, t, u, v = (int(x) for x in shape.split(","))
        step, _ = pruned_case(b, t, u, v, dev, 512, 5, "triton")
        eager = median_ms(step, args.repeats, dev, warmup=3)
        ref = step().item()
        try:
            replay = graphed(step)
            graph_ms = median_ms(replay, args.repeats, dev, warmup=3)
            same = abs(replay().item() - ref) <= 1e-4 * abs(ref)
        except Exception as exc:  # a capture that fails says why
            print(f"# capture failed at {shape}: {type(exc).__name__}: {exc}"[:300])
            graph_ms, same = float("nan"), None
        ta = float("nan")
        if ta_fn is not None:
            ta_step, _ = full_case(ta_fn, b, t, u, v, dev)
            ta = median_ms(ta_step, args.repeats, dev, warmup=3)
        print(f"| {b} | {t} | {u} | {v} | {eager:.2f} | {graph_ms:.2f} | {ta:.2f} | "
              f"{ta / eager:.2f}x | {ta / graph_ms:.2f}x | {same} |", flush=True)  # fmt: skip
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
