"""Servers for the tests: real uvicorn servers on loopback, in a thread of the test process
(``running_server``) or as a ``mamba-asr serve`` process (``serve_process``), and a WebSocket
client that streams a waveform (``stream_file``)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from mamba_asr.serve.app import ServeConfig, create_app
from mamba_asr.serve.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.flac"
HELLO_TEXT = (ROOT / "examples" / "hello.txt").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(engine: Engine, **settings: object) -> Iterator[str]:
    """A server of ``engine`` in a thread; yields its base URL (http://127.0.0.1:PORT)."""
    config = ServeConfig(port=free_port(), **settings)  # type: ignore[arg-type]
    app = create_app(engine, config)
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=config.port, log_level="warning",
        ws_max_size=config.max_message_kb * 1024,
    ))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def serve_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``mamba-asr serve ARGS`` on a free port; yields the process and its base URL. The model
    step runs on the server's thread unless ARGS say ``--worker process`` (the CLI's default):
    a second process per server, started with spawn, costs each test seconds of start-up on a
    busy machine; tests/serve/test_server.py compares the two workers, and the SIGTERM test
    runs the CLI's default."""
    if "--worker" not in args:
        args = ("--worker", "thread", *args)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:  # not a pipe: a full pipe would stop the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "mamba_asr", "serve", "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        try:
            deadline = time.time() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"mamba-asr serve ended: {log.read()}")
                with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health") as r:
                    if r.status == 200:
                        break
                if time.time() > deadline:
                    raise RuntimeError("mamba-asr serve did not start")
                time.sleep(0.2)
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def stream_file(url: str, wave, rate: int, fmt: str = "pcm16", packet_s: float = 0.1,
                pace: float = 0.0, **connect: object) -> tuple[list[dict], int, str]:  # fmt: skip
    """Stream ``wave`` (float, mono) to ``url``'s /v1/stream in ``packet_s`` packets (``pace``:
    seconds of waiting per packet), then end; the messages, close code and reason."""
    import json

    import numpy as np
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    data = (np.clip(wave, -1, 1) * 32767).astype("<i2") if fmt == "pcm16" else wave.astype("<f4")
    step = max(1, int(packet_s * rate))
    messages: list[dict] = []
    with ws_connect(url.replace("http", "ws") + "/v1/stream", **connect) as ws:
        ws.send(json.dumps({"type": "config", "sample_rate": rate, "format": fmt}))
        for i in range(0, len(data), step):
            ws.send(data[i : i + step].tobytes())
            if pace:
                time.sleep(pace)
        ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=120)))
        except ConnectionClosed:
            pass
        return messages, ws.close_code, ws.close_reason


def multipart(audio: bytes, **fields: str) -> tuple[bytes, str]:
    """A multipart form: ``fields`` and the audio file; (body, Content-Type)."""
    boundary = "mamba-asr-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n".encode()
        + audio
        + b"\r\n"
    )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
