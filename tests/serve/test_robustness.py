"""Bad clients never hurt others: a ``mamba-asr serve`` process takes malformed and oversized
messages, wrong sample formats, clients that vanish or never read, and 1000 connect/disconnect
cycles while a good stream runs beside them; the good stream's transcript is unchanged, each
bad client gets a clear close reason, memory returns to its baseline, and on SIGTERM the open
stream still gets its finals."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from helpers.server import HELLO, HELLO_TEXT, serve_process, stream_file
from mamba_asr.serve.protocol import AudioFormat
from mamba_asr.serve.scheduler import Close, Scheduler

psutil = pytest.importorskip("psutil", reason="the memory check needs psutil")
websockets = pytest.importorskip("websockets")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())


async def close_of(ws_url: str, *messages: str | bytes) -> tuple[int, str]:
    """Send ``messages`` after the handshake; the server's close code and reason."""
    async with websockets.connect(ws_url, max_size=None) as ws:
        for m in messages:
            await ws.send(m)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason


async def abuse(ws_url: str) -> list[tuple[int, str]]:
    pcm = (np.sin(np.arange(16000) / 9) * 8000).astype("<i2").tobytes()
    config = json.dumps({"type": "config", "sample_rate": 16000, "format": "float32"})
    closes = [
        await close_of(ws_url, "{not json"),
        await close_of(ws_url, json.dumps({"type": "dance"})),
        await close_of(ws_url, pcm[:-1]),  # an odd byte count: not whole pcm16 samples
        await close_of(ws_url, config, np.full(100, np.nan, "<f4").tobytes()),
        await close_of(ws_url, json.dumps({"sample_rate": "fast"})),
        await close_of(ws_url, pcm, json.dumps({"type": "config", "sample_rate": 8000})),
        await close_of(ws_url, b"\0" * (80 * 1024)),  # over --max-message-kb 64
    ]
    for _ in range(3):  # vanish mid-stream, without a close frame
        ws = await websockets.connect(ws_url)
        await ws.send(pcm * 3)
        ws.transport.abort()
    # a client that sends 30 s at once and never reads what comes back
    silent = await websockets.connect(ws_url, max_queue=1)
    for _ in range(30):
        await silent.send(pcm)
    for _ in range(1000):  # connect and go
        async with websockets.connect(ws_url):
            pass
    await asyncio.sleep(2)
    silent.transport.abort()
    return closes


@pytest.mark.slow
def test_bad_clients_do_not_hurt_others_and_memory_returns(tmp_path):
    wave, rate = sf.read(HELLO, dtype="float32")
    pause = np.zeros(rate, np.float32)
    good_audio = np.concatenate([wave, pause] * 4)
    with serve_process("--max-message-kb", "64") as (proc, url):
        ws_url = url.replace("http", "ws") + "/v1/stream"
        alone, _, _ = stream_file(url, good_audio, rate)  # also warms up: the first allocates
        server = psutil.Process(proc.pid)
        baseline = server.memory_info().rss
        good: list = []
        runner = threading.Thread(target=lambda: good.append(
            stream_file(url, good_audio, rate, pace=0.1)))  # fmt: skip
        runner.start()
        closes = asyncio.run(abuse(ws_url))
        runner.join(timeout=120)
        messages, code, _ = good[0]
        assert code == 1000
        finals = [m["text"] for m in messages if m["type"] == "final"]
        assert finals == [m["text"] for m in alone if m["type"] == "final"]
        assert len(finals) == 4 and finals[0] == HELLO_TEXT
        codes = [c for c, _ in closes]
        assert codes == [1007, 1008, 1007, 1007, 1007, 1007, 1009]
        reasons = [r for _, r in closes]
        assert "JSON" in reasons[0] and "dance" in reasons[1]
        assert "pcm16" in reasons[2] and "finite" in reasons[3] and "sample_rate" in reasons[4]
        assert "first" in reasons[5]
        for _ in range(50):
            if health(url)["streams"] == 0:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert health(url)["streams"] == 0
        grown = (server.memory_info().rss - baseline) / 2**20
        assert grown < 40, f"the server's memory grew by {grown:.0f} MiB"
        assert proc.poll() is None


@pytest.mark.slow
def test_sigterm_sends_open_streams_their_finals():
    wave, rate = sf.read(HELLO, dtype="float32")
    pcm = (np.concatenate([wave, np.zeros(rate // 2, np.float32)]) * 32767).astype("<i2")

    async def talk(url: str, proc) -> list[dict]:
        async with websockets.connect(url.replace("http", "ws") + "/v1/stream") as ws:
            await ws.send(pcm.tobytes())
            assert json.loads(await ws.recv())["type"] == "ready"
            proc.send_signal(signal.SIGTERM)
            got = []
            try:
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            except websockets.ConnectionClosed:
                pass
            got.append({"close": ws.close_code, "reason": ws.close_reason})
            return got

    with serve_process("--worker", "process") as (proc, url):  # the CLI's default worker
        got = asyncio.run(talk(url, proc))
        # uvicorn ends by raising the signal it caught again, after the graceful shutdown
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert got[-1]["close"] == 1001 and "shutting down" in got[-1]["reason"]
    assert got[-2]["type"] == "done" and got[-2]["text"] == HELLO_TEXT


def test_a_client_that_does_not_read_is_closed_not_buffered():
    scheduler = Scheduler(SimpleNamespace(sample_rate=16000), max_queued=5)
    slot = scheduler.open(AudioFormat())
    scheduler._deliver(slot, [f"partial {i}" for i in range(8)])
    items = [slot.out.get_nowait() for _ in range(slot.out.qsize())]
    assert items[:5] == [f"partial {i}" for i in range(5)]
    assert isinstance(items[5], Close) and items[5].code == 1008 and len(items) == 6
    assert slot.closed and slot not in scheduler.slots
