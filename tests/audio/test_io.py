"""Tests for audio reading: formats, downmix, resampling, and one-line errors for bad files."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_asr.audio.io import AudioError, AudioInfo, audio_info, check_audio, load_audio


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]
)
def test_formats_read_back(tmp_path, fmt, subtype):
    wave = sine(440, 16000)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, wave, 16000, format=fmt, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert len(out) == len(wave)
    assert np.abs(out).max() <= 1.0
    if fmt == "OGG":  # lossy: the tone survives
        assert abs(peak_frequency(out, 16000) - 440) < 2
    else:
        np.testing.assert_allclose(out, wave, atol=1 / 2**15)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_duration(tmp_path, rate):
    path = tmp_path / "tone.wav"
    sf.write(path, sine(1000, rate), rate, subtype="FLOAT")
    out = load_audio(path, sample_rate=16000)
    assert abs(len(out) - 16000) <= 1
    assert abs(peak_frequency(out, 16000) - 1000) < 2
    # HQ resampling keeps the tone's level (away from the edges)
    np.testing.assert_allclose(np.abs(out[2000:-2000]).max(), 0.5, atol=5e-3)


def test_stereo_is_averaged(tmp_path):
    left, right = sine(300, 16000), sine(700, 16000, amp=0.25)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_24")
    out = load_audio(path)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_float_file_beyond_unit_range_is_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([0.5, 1.5, -2.0, 0.0] * 100, np.float32), 16000, subtype="FLOAT")
    out = load_audio(path)
    assert out.max() == 1.0 and out.min() == -1.0


def test_audio_info(tmp_path):
    path = tmp_path / "info.flac"
    sf.write(path, np.zeros((22050, 2), np.float32), 44100)
    info = audio_info(path)
    assert info == AudioInfo(0.5, 44100, 2)
    duration, rate, channels = info
    assert (duration, rate, channels) == (0.5, 44100, 2)


def _write_bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A bad file of the given kind and a word its error message must contain."""
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 16000), 16000)
    good_flac = tmp_path / "good.flac"
    sf.write(good_flac, sine(440, 16000), 16000)
    path = tmp_path / f"bad-{case}.wav"
    if case == "missing":
        return path, "no such file"
    if case == "directory":
        path.mkdir()
        return path, "directory"
    if case == "empty":
        path.touch()
        return path, "empty"
    if case == "not-audio":
        path.write_text("this is not audio\n" * 20)
        return path, "cannot decode"
    if case == "truncated-wav":
        path.write_bytes(good.read_bytes()[:5000])
        return path, "truncated"
    if case == "truncated-flac":
        path = path.with_suffix(".flac")
        path.write_bytes(good_flac.read_bytes()[: good_flac.stat().st_size // 2])
        return path, "truncated"
    if case == "zero-samples":
        sf.write(path, np.zeros(0, np.float32), 16000)
        return path, "no audio samples"
    if case == "bit-flip-flac":
        path, data = path.with_suffix(".flac"), bytearray(good_flac.read_bytes())
        data[len(data) // 2] ^= 0x10  # the header is intact: only decoding finds it
        path.write_bytes(bytes(data))
        return path, "corrupt"
    if case == "fifo":
        os.mkfifo(path)
        return path, "not a regular file (a named pipe)"
    if case == "nan-inf":
        wave = sine(440, 16000)
        wave[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
        sf.write(path, wave, 16000, subtype="FLOAT")
        return path, "1 NaN and 2 infinite"
    raise AssertionError(case)


BAD_CASES = [
    "missing",
    "directory",
    "empty",
    "not-audio",
    "truncated-wav",
    "truncated-flac",
    "zero-samples",
    "nan-inf",
    "bit-flip-flac",
    pytest.param("fifo", marks=pytest.mark.skipif(sys.platform == "win32", reason="POSIX FIFO")),
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_give_one_line_audio_error(tmp_path, case):
    path, words = _write_bad(tmp_path, case)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert words in message
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(path)


@pytest.mark.parametrize("case", BAD_CASES)
def test_check_audio_rejects_what_load_audio_rejects(tmp_path, case):
    path, words = _write_bad(tmp_path, case)
    with pytest.raises(AudioError, match=re.escape(words)) as info:
        check_audio(path, block_frames=1000)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_check_audio_of_a_good_file_is_its_info(tmp_path):
    path = tmp_path / "ok.flac"
    sf.write(path, np.zeros((22050, 2), np.float32), 44100)
    assert check_audio(path, block_frames=1000) == audio_info(path) == AudioInfo(0.5, 44100, 2)
    flipped, _ = _write_bad(tmp_path, "bit-flip-flac")
    assert audio_info(flipped).duration == 1.0  # the header alone looks fine


@pytest.mark.parametrize(
    "case", ["missing", "directory", "empty", "not-audio", "truncated-wav", "zero-samples", "fifo"]
)
def test_audio_info_rejects_what_its_header_shows(tmp_path, case):
    path, words = _write_bad(tmp_path, case)
    with pytest.raises(AudioError, match=re.escape(words)) as info:
        audio_info(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_sample_rate_argument(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(440, 16000), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, sample_rate=0)
