"""``mamba-asr transcribe --stream`` and its parts: block reading, incremental features,
streamed decoding equal to offline, partial output, errors, and memory that stays flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.recipes import tiny_asr
from mamba_asr.asr import ASR
from mamba_asr.audio import Fbank, load_audio
from mamba_asr.audio.stream import StreamingFbank, read_blocks
from mamba_asr.cli import main
from mamba_asr.transcription import transcribe_file
from mamba_asr.writers import format_transcript


@pytest.fixture(scope="module")
def rnnt_model(tmp_path_factory) -> str:
    """A tiny random streaming transducer (8x subsampling) that emits tokens on tones."""
    asr = tiny_asr("transducer", blank_bias=0.2)
    return str(asr.save(tmp_path_factory.mktemp("rnnt") / "model.pt"))


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory) -> str:
    return str(tiny_asr("ctc").save(tmp_path_factory.mktemp("ctc") / "model.pt"))


def _signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones plus noise, (N,) or (N, C)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    wave = tone[:, None] + 0.05 * rng.standard_normal((t.shape[0], channels))
    return (wave[:, 0] if channels == 1 else wave).astype(np.float32)


@pytest.fixture(scope="module")
def audio_44k(tmp_path_factory) -> str:
    """7.3 s of stereo 44.1 kHz FLAC: resampled and downmixed on the way in."""
    path = tmp_path_factory.mktemp("audio") / "tones.flac"
    sf.write(path, _signal(7.3, 44100, channels=2), 44100)
    return str(path)


# --- parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (8000, 1), (48000, 2)])
@pytest.mark.parametrize("block_seconds", [0.05, 0.32, 2.0])
def test_blocks_join_to_load_audio(tmp_path, rate, channels, block_seconds):
    path = tmp_path / "a.flac"
    sf.write(path, _signal(3.01, rate, channels), rate)
    blocks = list(read_blocks(path, 16000, block_seconds))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path, 16000))


@pytest.mark.parametrize("seconds", [3.01, 4.0, 0.2])
@pytest.mark.parametrize("block_seconds", [0.32, 1.0, 5.0])
def test_blocks_hold_block_seconds_each_then_a_shorter_last(tmp_path, seconds, block_seconds):
    """Blocks of block_seconds (however much libsndfile reads at a time), the last one
    shorter, empty at an exact end."""
    path = tmp_path / "a.flac"
    sf.write(path, _signal(seconds, 16000), 16000)
    sizes = [b.shape[0] for b in read_blocks(path, 16000, block_seconds)]
    frames, total = round(block_seconds * 16000), round(seconds * 16000)
    assert sizes == [frames] * (total // frames) + [total % frames]


def test_streaming_fbank_gives_the_offline_frames():
    wave = torch.from_numpy(_signal(3.0, 16000) + 0.001)
    fbank = Fbank(16000, 80)
    full, lengths = fbank(wave[None])  # (1, T, M)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, wave.shape[0]), size=40, replace=False))
    pieces = np.split(wave.numpy(), cuts)  # uneven pieces, some shorter than a window
    streaming = StreamingFbank(fbank)
    frames = torch.cat([streaming.accept(torch.from_numpy(p)) for p in pieces], dim=1)
    assert frames.shape == full.shape and int(lengths[0]) == frames.shape[1]
    # equal up to float32 rounding of the convolution: the log-Mel values span about 25
    torch.testing.assert_close(frames, full, rtol=0, atol=2e-5)
    assert streaming.buffer.shape[1] < fbank.win_length


def test_streaming_fbank_accept_many_equals_one_by_one():
    fbank = Fbank(16000, 80)
    rng = np.random.default_rng(2)
    waves = [torch.from_numpy(_signal(s, 16000) + 0.001 * i) for i, s in enumerate((1.0, 2.3, 0.7))]
    alone = [StreamingFbank(fbank) for _ in waves]
    together = [StreamingFbank(fbank) for _ in waves]
    pos = [0] * len(waves)
    for _ in range(12):  # uneven pieces, some empty or shorter than a window
        pieces = []
        for i, w in enumerate(waves):
            n = int(rng.choice([0, 100, 399, 1600, 5000]))
            pieces.append(w[pos[i] : pos[i] + n])
            pos[i] += n
        one = [s.accept(p) for s, p in zip(alone, pieces, strict=True)]
        many = StreamingFbank.accept_many(together, pieces)
        for a, b in zip(one, many, strict=True):
            assert a.shape == b.shape
            # a batch of streams and one stream go through the convolution in different orders
            # of summation (which depends on the CPU's kernels): float32 rounding, relative to
            # values up to about 25 (2.2e-5 apart at a value of 6.5, 3.4e-6 relative, on one Xeon)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=2e-5)
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(b.buffer, a.buffer, rtol=0, atol=0)


def test_bad_file_errors_in_blocks(tmp_path):
    flac = tmp_path / "full.flac"
    sf.write(flac, _signal(4.0, 16000), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.flac: .*truncated"):
        list(read_blocks(cut, 16000, 0.5))
    with pytest.raises(ValueError, match="no such file"):
        list(read_blocks(tmp_path / "missing.flac"))


# --- streamed equals offline -------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [80, 320, 1000, 5000])
def test_stream_equals_offline(rnnt_model, audio_44k, chunk_ms):
    asr = ASR.load(rnnt_model)
    offline = transcribe_file(asr, audio_44k)
    streamed = transcribe_file(asr, audio_44k, chunk_ms=chunk_ms)
    assert offline.tokens, "the seeded tiny transducer should emit tokens"
    assert streamed.text == offline.text
    assert streamed.tokens == offline.tokens  # same frames, so the same times
    assert streamed.words == offline.words
    assert streamed.duration == pytest.approx(offline.duration)


@pytest.mark.parametrize("chunk_ms", ["80", "320", "1100"])
def test_cli_stream_equals_offline(rnnt_model, audio_44k, capsys, chunk_ms):
    args = ["transcribe", audio_44k, "--model", rnnt_model, "--format", "json"]
    assert main(args) == 0
    offline = json.loads(capsys.readouterr().out)
    assert main([*args, "--stream", "--chunk-ms", chunk_ms]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == offline
    assert err == ""  # not a terminal: no partial output


def test_partial_results_on_a_terminal(rnnt_model, audio_44k, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["transcribe", audio_44k, "--model", rnnt_model, "--stream"]) == 0
    out, err = capsys.readouterr()
    final = transcribe_file(ASR.load(rnnt_model), audio_44k)
    assert out == format_transcript(final, "txt")  # stdout: the final transcript only
    updates = [u for u in err.split("\r\x1b[K") if u]
    assert len(updates) >= 10  # one per 320 ms chunk, the line rewritten in place
    seconds = [float(u.split(" s ")[0]) for u in updates]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(7.3, abs=0.05)
    assert all(len(u) <= 59 for u in updates)  # the end of the text fitted to the width
    assert err.endswith("\r\x1b[K")  # cleared before the final result


def test_stream_with_a_ctc_model_is_one_error_line(ctc_model, audio_44k, capsys):
    assert main(["transcribe", audio_44k, "--model", ctc_model, "--stream"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "mamba-asr: error: streaming needs a transducer model, this one is ctc "
        "(transcribe it without --stream)\n"
    )


def test_chunk_shorter_than_an_encoder_frame_is_one_error_line(rnnt_model, audio_44k, capsys):
    assert main(["transcribe", audio_44k, "--model", rnnt_model, "--stream", "--chunk-ms", "50"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chunk_ms must be at least 80" in err


def test_stream_bad_files_one_line_each(rnnt_model, audio_44k, tmp_path, capsys):
    flac = tmp_path / "full.flac"
    sf.write(flac, _signal(4.0, 16000), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    missing = tmp_path / "missing.wav"
    args = ["transcribe", str(cut), audio_44k, str(missing), "--model", rnnt_model, "--stream"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out and all(line.startswith(f"{audio_44k}: ") for line in out.splitlines())
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"mamba-asr: error: {cut}: ") and "truncated" in lines[0]
    assert lines[1] == f"mamba-asr: error: {missing}: no such file"


# --- memory ------------------------------------------------------------------------------------


def _write_long(path: Path, minutes: float, rate: int = 44100) -> None:
    """Stereo FLAC of tones and noise, written a minute at a time."""
    with sf.SoundFile(path, "w", rate, 2, format="FLAC") as f:
        for i in range(int(np.ceil(minutes))):
            f.write(_signal(min(60.0, minutes * 60 - 60 * i), rate, channels=2, seed=i))


# The child's own high-water mark: ``ru_maxrss`` of a child would count the parent's pages
# before exec (a pytest process with torch loaded), hiding the child's growth.
_RUN_AND_REPORT_PEAK = """
import re, sys
from mamba_asr.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("VmHWM", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
sys.exit(code)
"""


def _peak_rss_kib(args: list[str]) -> int:
    """Peak resident memory (KiB) of ``mamba-asr ARGS`` run in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_AND_REPORT_PEAK, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.split("VmHWM")[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_stream_memory_does_not_grow_with_length(rnnt_model, tmp_path):
    """6 minutes of 44.1 kHz stereo (127 MB as float32, read whole) peak within 10% of 1 minute."""
    short, long = tmp_path / "1min.flac", tmp_path / "6min.flac"
    _write_long(short, 1)
    _write_long(long, 6)
    common = ["transcribe", "--model", rnnt_model, "--stream", "--threads", "1", "--device", "cpu"]
    peak_short = _peak_rss_kib([*common[:1], str(short), *common[1:]])
    peak_long = _peak_rss_kib([*common[:1], str(long), *common[1:]])
    print(f"peak RSS: 1 min {peak_short / 1024:.1f} MiB, 6 min {peak_long / 1024:.1f} MiB")
    assert peak_long <= 1.10 * peak_short, (peak_short, peak_long)


def test_offline_transcribes_long_audio_as_one_stream(rnnt_model, tmp_path):
    """Past 30 s a streaming transducer is not cut into windows: offline equals --stream, and
    the token times run on across the 30 s mark."""
    path = tmp_path / "long.flac"
    sf.write(path, _signal(65.0, 16000, seed=3), 16000)
    asr = ASR.load(rnnt_model)
    offline = transcribe_file(asr, path, progress=True)
    streamed = transcribe_file(asr, path, chunk_ms=320)
    assert offline.tokens == streamed.tokens and offline.text == streamed.text
    assert offline.duration == pytest.approx(65.0)
    starts = [t.start for t in offline.tokens]
    assert starts == sorted(starts) and starts[-1] > 31.0
