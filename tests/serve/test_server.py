"""The server with real clients on loopback: the official ``openai`` client, WebSocket
clients streaming files, and HTTP; every result is compared with ``mamba_asr.transcribe`` of
the same audio."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

import mamba_asr
from helpers.server import HELLO, HELLO_TEXT, running_server, stream_file
from mamba_asr.decode import DecodingOptions
from mamba_asr.serve.engine import Engine
from mamba_asr.writers import format_transcript

openai = pytest.importorskip("openai", reason="the OpenAI-client tests need pip install openai")


@pytest.fixture(scope="module")
def asr():
    return mamba_asr.load_model(device="cpu")


OPTIONS = {"strategy": "greedy"}  # the server's default (mamba-asr serve)


@pytest.fixture(scope="module")
def offline(asr):
    return mamba_asr.transcribe(asr, HELLO, **OPTIONS)


@pytest.fixture(scope="module")
def url(asr):
    engine = Engine(asr, "mct-small-synth-en", DecodingOptions(**OPTIONS))
    with running_server(engine, max_streams=6, max_message_kb=64) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_health_and_models(url, client):
    health = get_json(url + "/health")
    assert health["status"] == "ok" and health["model"] == "mct-small-synth-en"
    assert [m.id for m in client.models.list()] == ["mct-small-synth-en"]


def test_the_example_is_recognised(offline):
    assert offline.text == HELLO_TEXT  # what the comparisons below stand on


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt"])
def test_openai_client_gets_what_transcribe_gives(client, offline, fmt):
    with open(HELLO, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
    if fmt == "json":
        assert result.text == offline.text
    elif fmt == "text":
        assert result.strip() == offline.text
    else:
        assert result == format_transcript(offline, fmt)


def test_openai_verbose_json_with_words_and_segments(client, offline):
    with open(HELLO, "rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )  # fmt: skip
    assert result.text == offline.text
    assert result.duration == pytest.approx(offline.duration, abs=1e-3)
    assert [(w.word, w.start, w.end) for w in result.words] == [
        (w.text, w.start, w.end) for w in offline.words
    ]
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (s.start, s.end, s.text) for s in offline.segments
    ]


def test_openai_stream_gives_deltas_then_done(client, offline):
    with open(HELLO, "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == offline.text


def test_http_errors_come_in_the_openai_shape(client, url):
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="m", file=("notes.txt", b"not audio at all"))
    error = info.value.body
    assert error["param"] == "file" and "notes.txt" in error["message"]
    assert "not audio" in error["message"]
    with pytest.raises(openai.BadRequestError, match="response_format"), open(HELLO, "rb") as f:
        client.audio.transcriptions.create(model="m", file=f, response_format="xml")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/v1/no-such-route", timeout=10)
    assert info.value.code == 404 and "error" in json.loads(info.value.read())


def test_websocket_stream_equals_offline(url, offline):
    wave, rate = sf.read(HELLO, dtype="float32")
    messages, code, _ = stream_file(url, wave, rate, pace=0.05)  # twice real time
    assert code == 1000
    assert messages[0]["type"] == "ready"
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "done" and "partial" in kinds and "final" in kinds
    done = messages[-1]
    assert done["text"] == offline.text
    assert done["words"] == json.loads(offline.to_json())["words"]
    finals = [m["text"] for m in messages if m["type"] == "final"]
    assert " ".join(finals) == offline.text
    decoded = [m["decoded"] for m in messages if m["type"] == "partial"]
    assert decoded == sorted(decoded) and len(decoded) >= 5  # a partial per decoded chunk


def test_websocket_float32_at_another_rate_is_resampled(url, asr):
    import soxr

    wave, rate = sf.read(HELLO, dtype="float32")
    wave44 = soxr.resample(wave, rate, 44100).astype(np.float32)
    messages, code, _ = stream_file(url, wave44, 44100, fmt="float32")
    assert code == 1000
    assert (
        messages[-1]["text"] == mamba_asr.transcribe(asr, wave44, sample_rate=44100, **OPTIONS).text
    )


def test_a_long_connection_gives_one_final_per_sentence_and_silence_no_text(url):
    wave, rate = sf.read(HELLO, dtype="float32")
    pause = np.zeros(int(3.0 * rate), np.float32)
    long = np.concatenate([wave, pause, wave, pause, wave, pause])
    messages, code, _ = stream_file(url, long, rate, packet_s=0.5)
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["text"] for f in finals] == [HELLO_TEXT] * 3
    assert [f["segment"] for f in finals] == [0, 1, 2]
    assert finals[1]["segments"][0]["start"] > 5.0  # times count from the stream's start
    silence, code, _ = stream_file(url, np.zeros(5 * rate, np.float32), rate)
    assert code == 1000
    assert [m["type"] for m in silence if m["type"] == "final"] == []
    assert silence[-1]["text"] == "" and all(m.get("text", "") == "" for m in silence)


def test_concurrent_streams_are_decoded_together(url, offline):
    wave, rate = sf.read(HELLO, dtype="float32")
    results: list = [None] * 4

    def one(i: int) -> None:
        results[i] = stream_file(url, wave, rate, pace=0.02)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r[0][-1]["text"] for r in results] == [offline.text] * 4
    assert get_json(url + "/health")["largest_batch"] >= 2


def test_streams_beyond_max_streams_are_refused_with_a_reason(url):
    from contextlib import ExitStack

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    ws_url = url.replace("http", "ws") + "/v1/stream"
    with ExitStack() as stack:
        for _ in range(6):
            ws = stack.enter_context(connect(ws_url))
            ws.send(json.dumps({"type": "config", "sample_rate": 16000}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        with connect(ws_url) as extra:
            with pytest.raises(ConnectionClosed):
                while True:
                    extra.recv(timeout=10)
            assert extra.close_code == 1013 and "busy" in extra.close_reason


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
def test_uploads_in_other_formats(client, asr, fmt, subtype):
    import io

    wave, rate = sf.read(HELLO, dtype="float32")
    buf = io.BytesIO()
    try:
        sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as exc:
        pytest.skip(f"this libsndfile cannot write {fmt}: {exc}")
    data = buf.getvalue()
    result = client.audio.transcriptions.create(model="m", file=(f"hello.{fmt.lower()}", data))
    assert result.text == mamba_asr.transcribe(asr, data, **OPTIONS).text


def test_a_worker_process_gives_what_the_worker_thread_gives(asr, offline):
    wave, rate = sf.read(HELLO, dtype="float32")
    long = np.concatenate([wave, np.zeros(rate, np.float32), wave])
    engine = Engine(asr, "mct-small-synth-en", DecodingOptions(**OPTIONS))
    results: dict[str, list] = {}
    for worker in ("thread", "process"):
        with running_server(engine, worker=worker) as base:
            got: list = [None] * 3

            def one(i: int, base: str = base, got: list = got) -> None:
                got[i] = stream_file(base, long if i else wave, rate, pace=0.02)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert [r[1] for r in got] == [1000] * 3
            assert get_json(base + "/health")["largest_batch"] >= 2
            # partials, and how far a final's step had decoded, depend on how the chunks met
            # in batches; the results do not
            results[worker] = [
                ([m["segments"] for m in r[0] if m["type"] == "final"], r[0][-1]) for r in got
            ]
    assert results["process"] == results["thread"]
    assert results["process"][0][1]["text"] == offline.text


def test_the_worker_setting_is_checked():
    from mamba_asr.serve.app import ServeConfig

    with pytest.raises(ValueError, match="--worker must be thread or process"):
        ServeConfig(worker="fork")
