"""Concurrent live streams on one server: batched model steps vs one stream at a time.

    python benchmarks/serve.py [--streams 1 2 4 8 16 32 48 64] [--seconds 12]
        [--modes batched one-at-a-time] [--threads 1] [--strategy greedy]

For each mode, a ``mamba-asr serve`` process (``--max-batch 1`` for one-at-a-time) gets N
concurrent WebSocket streams on loopback. Each stream sends ``--seconds`` of speech
(examples/hello.flac repeated, 1 s of silence between copies) as 16 kHz PCM16 in 100 ms
packets at real-time pace, starting at a random offset within the first second. Latency: from
the arrival of the packet that completes a chunk to the partial result that covers it
(``decoded`` of the partial), over every partial of every stream. A stream keeps up when every
latency in its last half stays under 1 s (no backlog that grows) and its ``done`` comes within
1 s of its ``end``. Capacity of a mode: the largest N at which every stream keeps up and the
95th percentile latency is under 500 ms. A mode's sweep stops after the first N that fails.
Prints a table and writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import websockets

ROOT = Path(__file__).resolve().parents[1]
PACKET_S = 0.1
RATE = 16000


def speech(seconds: float) -> np.ndarray:
    wave, rate = sf.read(ROOT / "examples" / "hello.flac", dtype="float32")
    assert rate == RATE
    piece = np.concatenate([wave, np.zeros(RATE, np.float32)])
    reps = int(np.ceil(seconds * RATE / piece.size))
    return (np.tile(piece, reps)[: int(seconds * RATE)] * 32767).astype("<i2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: argparse.Namespace, one_at_a_time: bool, log
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "mamba_asr", "serve", "--port", str(port), "--max-streams",
           "512", "--strategy", args.strategy, "--threads", str(args.threads)]  # fmt: skip
    if one_at_a_time:
        cmd += ["--max-batch", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


async def one_stream(ws_url: str, audio: np.ndarray, delay: float) -> dict:
    await asyncio.sleep(delay)
    step = int(PACKET_S * RATE)
    sent: list[float] = []  # arrival time of each packet (monotonic)
    latencies: list[tuple[float, float]] = []  # (audio position, latency)
    done_at = end_at = None
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": RATE, "format": "pcm16"}))

        async def reader() -> None:
            nonlocal done_at
            async for raw in ws:
                msg = json.loads(raw)
                now = time.monotonic()
                if msg["type"] == "partial":
                    k = min(
                        max(int(np.ceil(msg["decoded"] / PACKET_S - 1e-9)) - 1, 0), len(sent) - 1
                    )
                    latencies.append((msg["decoded"], now - sent[k]))
                elif msg["type"] == "done":
                    done_at = now

        task = asyncio.create_task(reader())
        start = time.monotonic()
        for i, k in enumerate(range(0, audio.size, step)):
            await asyncio.sleep(max(0.0, start + i * PACKET_S - time.monotonic()))
            sent.append(time.monotonic())
            await ws.send(audio[k : k + step].tobytes())
        end_at = time.monotonic()
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(task, timeout=120)
    half = audio.size / RATE / 2
    tail = [lat for pos, lat in latencies if pos >= half]
    kept = bool(tail) and max(tail) < 1.0 and done_at is not None and done_at - end_at < 1.0
    return {"latencies": [lat for _, lat in latencies], "kept_up": kept}


async def run_load(url: str, n: int, audio: np.ndarray, seed: int) -> dict:
    rng = random.Random(seed)
    ws_url = url.replace("http", "ws") + "/v1/stream"
    results = await asyncio.gather(*(one_stream(ws_url, audio, rng.random()) for _ in range(n)))
    lat = np.array([x for r in results for x in r["latencies"]]) * 1000
    kept = sum(r["kept_up"] for r in results)
    return {
        "streams": n, "kept_up": kept, "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)), "max_ms": float(lat.max()),
        "ok": kept == n and float(np.percentile(lat, 95)) < 500,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 48, 64])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--modes", nargs="+", default=["one-at-a-time", "batched"],
                        choices=["one-at-a-time", "batched"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="server's torch threads (1)")
    parser.add_argument("--strategy", default="greedy", choices=["greedy", "beam"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve.json")
    args = parser.parse_args()
    audio = speech(args.seconds)
    print("python benchmarks/serve.py " + " ".join(sys.argv[1:]))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}; {args.seconds:g} s per stream, {args.strategy}, "
          f"server threads {args.threads}")  # fmt: skip
    print(
        f"{'mode':>14} {'streams':>7} {'kept up':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}  ok"
    )
    rows, capacity = [], {}
    for mode in args.modes:
        with tempfile.TemporaryFile() as log:
            proc, url = start_server(args, mode == "one-at-a-time", log)
            try:
                asyncio.run(run_load(url, 1, audio, 0))  # warm-up
                capacity[mode] = 0
                for n in args.streams:
                    row = {"mode": mode, **asyncio.run(run_load(url, n, audio, n))}
                    rows.append(row)
                    print(f"{mode:>14} {n:>7} {row['kept_up']:>7} {row['p50_ms']:>7.0f} "
                          f"{row['p95_ms']:>7.0f} {row['max_ms']:>7.0f}  {'yes' if row['ok'] else 'no'}")  # fmt: skip
                    if not row["ok"]:
                        break
                    capacity[mode] = n
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    if len(capacity) == 2 and capacity["one-at-a-time"]:
        ratio = capacity["batched"] / capacity["one-at-a-time"]
        print(f"capacity: batched {capacity['batched']} streams, one at a time "
              f"{capacity['one-at-a-time']}: {ratio:.1f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(), "seconds": args.seconds, "strategy": args.strategy,
        "threads": args.threads, "rows": rows, "capacity": capacity,
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
