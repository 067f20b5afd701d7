"""Security defaults: loopback unless told, tokens on HTTP and WebSocket, an upload limit,
CORS off unless asked; and models that do not stream are served over HTTP only."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from helpers.recipes import tiny_asr
from helpers.server import multipart, running_server
from mamba_asr import cli
from mamba_asr.decode import DecodingOptions
from mamba_asr.serve.app import ServeConfig
from mamba_asr.serve.engine import Engine

websockets = pytest.importorskip("websockets")


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_asr("transducer", blank_bias=2.0), "tiny", DecodingOptions("greedy"))


def request(url: str, token: str | None = None, data: bytes | None = None, **headers: str):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wav_bytes(seconds: float) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    sf.write(buf, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000,
             format="WAV", subtype="PCM_16")  # fmt: skip
    return buf.getvalue()


def test_other_addresses_need_a_token_or_no_auth(capsys):
    with pytest.raises(ValueError, match="--token"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="0.0.0.0", no_auth=True)
    ServeConfig(host="0.0.0.0", token="s3cret")
    ServeConfig(host="::1")  # loopback
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--token" in err and "--no-auth" in err


def test_a_token_guards_http_and_websocket(engine):
    async def ws_close(url: str, **kw) -> tuple[int | None, str]:
        async with websockets.connect(url, **kw) as ws:
            try:
                await ws.send(json.dumps({"type": "config", "sample_rate": 16000}))
                first = json.loads(await ws.recv())
                return None, first["type"]
            except websockets.ConnectionClosed:
                return ws.close_code, ws.close_reason

    import asyncio

    with running_server(engine, token="s3cret") as url:
        assert request(url + "/health")[0] == 200  # open: for load balancers
        status, _, body = request(url + "/v1/models")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert request(url + "/v1/models", token="wrong")[0] == 401
        assert request(url + "/v1/models", token="s3cret")[0] == 200
        data, ctype = multipart(wav_bytes(0.5))
        assert (
            request(url + "/v1/audio/transcriptions", data=data, **{"Content-Type": ctype})[0]
            == 401
        )
        ws = url.replace("http", "ws") + "/v1/stream"
        code, reason = asyncio.run(ws_close(ws))
        assert code == 1008 and "token" in reason
        assert asyncio.run(ws_close(ws + "?token=s3cret")) == (None, "ready")
        headers = {"Authorization": "Bearer s3cret"}
        assert asyncio.run(ws_close(ws, additional_headers=headers)) == (None, "ready")


def test_uploads_over_the_limit_are_refused(engine):
    with running_server(engine, max_upload_mb=0.05) as url:
        small, ctype = multipart(wav_bytes(0.5))  # 16 kB
        status, _, body = request(url + "/v1/audio/transcriptions", data=small,
                                  **{"Content-Type": ctype})  # fmt: skip
        assert status == 200 and "text" in json.loads(body)
        big, ctype = multipart(wav_bytes(3.0))  # 96 kB
        status, _, body = request(url + "/v1/audio/transcriptions", data=big,
                                  **{"Content-Type": ctype})  # fmt: skip
        error = json.loads(body)["error"]
        assert status == 413 and error["code"] == "file_too_large" and "0.05 MB" in error["message"]


def test_cors_is_off_unless_asked(engine):
    origin = {"Origin": "http://example.com"}
    with running_server(engine) as url:
        _, headers, _ = request(url + "/health", **origin)
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
    with running_server(engine, cors_origins=("http://example.com",)) as url:
        _, headers, _ = request(url + "/health", **origin)
        allowed = {k.lower(): v for k, v in headers.items()}["access-control-allow-origin"]
        assert allowed == "http://example.com"


def test_a_model_that_does_not_stream_serves_http_and_refuses_streams():
    ctc = Engine(tiny_asr("ctc"), "tiny-ctc", DecodingOptions("greedy"))
    assert not ctc.streaming

    async def close(url: str) -> tuple[int, str]:
        async with websockets.connect(url) as ws:
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed:
                return ws.close_code, ws.close_reason

    import asyncio

    with running_server(ctc) as url:
        data, ctype = multipart(wav_bytes(0.5), response_format="verbose_json")
        status, _, body = request(url + "/v1/audio/transcriptions", data=data,
                                  **{"Content-Type": ctype})  # fmt: skip
        assert status == 200 and json.loads(body)["duration"] == pytest.approx(0.5)
        code, reason = asyncio.run(close(url.replace("http", "ws") + "/v1/stream"))
        assert code == 1008 and "stream" in reason


def test_an_idle_client_is_closed_with_a_reason(engine):
    import asyncio

    async def idle(url: str) -> tuple[int, str]:
        async with websockets.connect(url) as ws:
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed:
                return ws.close_code, ws.close_reason

    with running_server(engine, idle_timeout_s=0.5) as url:
        code, reason = asyncio.run(idle(url.replace("http", "ws") + "/v1/stream"))
        assert code == 1008 and "nothing received" in reason
        assert json.loads(request(url + "/health")[2])["streams"] == 0
