"""CPU time of one streaming chunk through exported encoder chunk graphs, compared in one run.

    python benchmarks/onnx_chunk.py A/encoder_chunk.int8.onnx B/encoder_chunk.int8.onnx
        [--frames 32] [--threads 1] [--rounds 8] [--calls 20] [--profile]

Each graph gets its own onnxruntime session (``--threads`` intra-op threads) and is fed the
same random features (``--frames`` feature frames, 32 = 320 ms) and a state from inside a
stream (the previous call's output). The graphs take turns, ``--rounds`` times ``--calls``
calls each, so a load that comes and goes on a shared machine falls on all of them alike;
each line gives the best and the median of the rounds' mean CPU time per call (the process's
CPU time, which the other jobs of the machine do not count into), and the graph's node count.
``--profile`` adds onnxruntime's profile of each graph by operator type (node count and time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(sess: ort.InferenceSession, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random features and a state from inside a stream (zeros, then three chunks)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in i.shape]
        if i.name == "feats":
            shape[1] = frames
        feeds[i.name] = np.zeros(shape, np.float32)
    names = [o.name for o in sess.get_outputs()]
    states = [n for n in feeds if n != "feats"]
    for _ in range(3):
        feeds["feats"] = rng.standard_normal(feeds["feats"].shape).astype(np.float32)
        outs = dict(zip(names, sess.run(None, feeds), strict=True))
        feeds.update({n: outs[n.replace("state", "new_state", 1)] for n in states})
    return feeds


def profile(path: Path, feeds: dict[str, np.ndarray], threads: int) -> list[tuple]:
    """(operator, nodes, microseconds per call), the most time first."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, f"{tmp}/p")
        for _ in range(20):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total, nodes = defaultdict(float), defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            total[op] += e["dur"] / 20
            nodes[op].add(e["name"])
    return sorted(((op, len(nodes[op]), t) for op, t in total.items()), key=lambda r: -r[2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", type=Path, nargs="+")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    sessions = [session(g, args.threads) for g in args.graphs]
    feeds = [feeds_for(s, args.frames) for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.rounds):
        for i, (sess, feed) in enumerate(zip(sessions, feeds, strict=True)):
            sess.run(None, feed)
            start = time.process_time()
            for _ in range(args.calls):
                sess.run(None, feed)
            times[i].append((time.process_time() - start) / args.calls * 1000)
    for g, t in zip(args.graphs, times, strict=True):
        ops = Counter(n.op_type for n in onnx.load(str(g), load_external_data=False).graph.node)
        print(f"{g}: best {min(t):.2f} ms, median {statistics.median(t):.2f} ms a chunk "
              f"({args.frames} frames), {sum(ops.values())} nodes")  # fmt: skip
    if args.profile:
        for g, feed in zip(args.graphs, feeds, strict=True):
            print(f"\n{g} (profiled; optimized graph)")
            for op, n, us in profile(g, feed, args.threads):
                print(f"  {op:28s} {n:4d} {us / 1000:7.3f} ms")


if __name__ == "__main__":
    main()
