"""Reading audio files: soundfile (libsndfile) to decode, soxr to resample.

Shape key
    N: samples, C: channels.

Every problem with a file raises ``AudioError`` (a ``ValueError``) whose message is one line,
``<path>: <problem>``, so the command line prints it as it is and a data-preparation run can
count and skip bad files. The checks behind them (``check_audio_path``, ``open_audio_info``,
``check_finite_samples``, ``soundfile_reason``) serve the other readers of audio files too
(``mamba_asr.audio.stream.read_blocks``), so every reader fails with the same messages.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioError",
    "AudioInfo",
    "as_waveform",
    "audio_info",
    "check_audio",
    "check_audio_path",
    "check_finite_samples",
    "load_audio",
    "open_audio_info",
    "read_blocks",
    "resample",
    "soundfile_reason",
]

StrPath = str | os.PathLike[str]


class AudioError(ValueError):
    """An audio file that cannot be used; ``str(error)`` is one line naming the file.

    ``path`` and ``problem`` hold the two parts of the message.
    """

    def __init__(self, path: StrPath, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(problem.split())  # one line, whatever libsndfile said
        super().__init__(f"{self.path}: {self.problem}")


class AudioInfo(NamedTuple):
    """What ``audio_info`` reads from a file's header."""

    duration: float  # seconds
    sample_rate: int
    channels: int


def audio_info(path: StrPath) -> AudioInfo:
    """Duration (seconds), sample rate and channels from the header only (cheap, for manifests).

    Raises ``AudioError`` for a missing, empty, unreadable or zero-length file and for a WAV
    file whose data chunk is cut short. A FLAC or Ogg file cut short is only found by decoding
    it (``load_audio``, ``check_audio``).
    """
    check_audio_path(path)
    info = open_audio_info(path)
    return AudioInfo(info.frames / info.samplerate, info.samplerate, info.channels)


def check_audio(path: StrPath, block_frames: int = 1 << 16) -> AudioInfo:
    """``audio_info`` after decoding every frame, ``block_frames`` at a time (none kept).

    Raises ``AudioError`` for all that ``load_audio`` rejects, so also for a FLAC or Ogg file
    that is cut short or corrupt inside (a flipped bit fails the frame's checksum) and for NaN
    or infinite samples; a file that passes loads.
    """
    check_audio_path(path)
    info = open_audio_info(path)
    frames, nan, inf = 0, 0, 0
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            for block in f.blocks(block_frames, dtype="float32", always_2d=True):  # (n, C)
                frames += len(block)
                nan, inf = nan + int(np.isnan(block).sum()), inf + int(np.isinf(block).sum())
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"corrupt or truncated audio ({soundfile_reason(exc)})") from exc
    if frames < info.frames:
        raise AudioError(path, f"truncated: header says {info.frames} frames, read {frames}")
    if nan or inf:
        raise AudioError(path, f"contains {nan} NaN and {inf} infinite samples")
    return AudioInfo(info.frames / info.samplerate, info.samplerate, info.channels)


def load_audio(path: StrPath, sample_rate: int = 16000) -> np.ndarray:
    """Decode a file to mono float32 samples in [-1, 1] at ``sample_rate``: (N,).

    Channels are averaged; a file at another rate is resampled with soxr (HQ). Float files
    holding values beyond [-1, 1] are clipped. Raises ``AudioError`` for a missing, empty,
    unreadable, truncated or zero-length file and for NaN or infinite samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    check_audio_path(path)
    data, file_rate = _read(path)  # (N, C)
    check_finite_samples(path, data)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (N,)
    if file_rate != sample_rate:
        wave = resample(wave, file_rate, sample_rate)
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)


_PCM_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31, np.dtype(np.int8): 2.0**7}


def as_waveform(samples: Any, name: str = "waveform") -> np.ndarray:
    """Mono samples as float32 (N,) in [-1, 1]: floats are taken as they are, integer PCM is
    scaled (int16 by 2**15, int32 by 2**31, int8 by 2**7; uint8 is offset by 128, as in 8-bit
    WAV), a torch tensor is read from any device. Raises ``AudioError`` (one line, naming
    ``name``) for anything else: not 1-D, not numbers, NaN or infinite samples."""
    if hasattr(samples, "detach"):  # a torch tensor, without importing torch here
        samples = samples.detach().cpu().numpy()
    wave = np.asarray(samples)
    if wave.ndim != 1:
        raise AudioError(name, f"must be a mono waveform (N,), got shape {wave.shape}")
    if wave.dtype == np.uint8:
        return ((wave.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if wave.dtype in _PCM_SCALE:
        return (wave.astype(np.float32) / _PCM_SCALE[wave.dtype]).astype(np.float32)
    if wave.dtype.kind != "f":
        raise AudioError(name, f"samples must be float or integer PCM, got dtype {wave.dtype}")
    wave = wave.astype(np.float32, copy=False)
    check_finite_samples(name, wave)
    return wave


def resample(wave: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """(N,) float32 at ``from_rate`` -> (N * to_rate / from_rate,) float32 (soxr, HQ)."""
    if from_rate == to_rate:
        return wave
    out = soxr.resample(wave, from_rate, to_rate, quality="HQ")
    return out.astype(np.float32, copy=False)


_NOT_FILES = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def check_audio_path(path: StrPath) -> None:
    """AudioError for a missing file, a directory, anything but a regular file, an empty file."""
    p = Path(path)
    if not p.exists():
        raise AudioError(path, "no such file")
    if p.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    mode = p.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = _NOT_FILES.get(stat.S_IFMT(mode), "a special file")
        raise AudioError(path, f"not a regular file ({kind}); give a file holding the audio")
    if p.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def open_audio_info(path: StrPath) -> Any:
    """soundfile's header info, with every failure turned into an AudioError."""
    try:
        info = sf.info(os.fspath(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"cannot decode audio ({soundfile_reason(exc)})") from exc
    if info.format in ("WAV", "WAVEX"):
        _check_wav_data_chunk(path)
    if info.frames <= 0:
        raise AudioError(path, "no audio samples (0 frames)")
    return info


def _read(path: StrPath) -> tuple[np.ndarray, int]:
    """(N, C) float32 samples and the file's sample rate; AudioError when decoding fails."""
    info = open_audio_info(path)
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"corrupt or truncated audio ({soundfile_reason(exc)})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples (0 frames)")
    if data.shape[0] < info.frames:
        raise AudioError(path, f"truncated: header says {info.frames} frames, read {len(data)}")
    return data, int(rate)


def check_finite_samples(path: StrPath, data: np.ndarray) -> None:
    """AudioError naming how many samples are NaN or infinite."""
    nan = int(np.isnan(data).sum())
    inf = int(np.isinf(data).sum())
    if nan or inf:
        raise AudioError(path, f"contains {nan} NaN and {inf} infinite samples")


def _check_wav_data_chunk(path: StrPath) -> None:
    """AudioError when a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile quietly reads what is there; a download cut short should not pass as audio.
    Sizes 0 and 0xFFFFFFFF (written by streaming encoders that never go back) are not checked.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # RF64 and other variants: libsndfile's word stands
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size:
                    have = size - pos - 8
                    raise AudioError(
                        path, f"truncated WAV: data chunk of {chunk_size} bytes, {have} present"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes


def soundfile_reason(exc: BaseException) -> str:
    """libsndfile's own words, without the "Error opening 'path':" prefix it repeats."""
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")


READ_SECONDS = 2.0  # read_blocks reads this much audio or more per libsndfile call


def read_blocks(
    path: StrPath, sample_rate: int = 16000, block_seconds: float = 1.0
) -> Iterator[np.ndarray]:
    """Mono float32 blocks (n,) in [-1, 1] at ``sample_rate``, about ``block_seconds`` each.

    Channels are averaged, then resampled with soxr (HQ) as ``load_audio`` does, so the blocks
    joined equal ``load_audio``'s waveform. Raises ``AudioError`` (one line naming the file)
    for a missing, empty, unreadable, truncated or zero-length file and for NaN or infinite
    samples, which may come after some blocks were yielded. Blocks may be empty.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    check_audio_path(path)
    info = open_audio_info(path)
    file_rate = int(info.samplerate)
    frames = max(1, round(block_seconds * file_rate))
    resampler = (
        soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ")
        if file_rate != sample_rate
        else None
    )
    # whole blocks at a time, READ_SECONDS or more: each read of libsndfile's costs seeks
    per_read = frames * max(1, round(READ_SECONDS * file_rate) // frames)
    read = 0
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            while True:
                data = _read_block(path, f, per_read)  # (n, C)
                read += data.shape[0]
                end = data.shape[0] < per_read
                check_finite_samples(path, data)
                for start in range(0, data.shape[0], frames):
                    block = data[start : start + frames]
                    yield _mono(block, resampler, end and block.shape[0] < frames)
                if end:
                    if data.shape[0] % frames == 0:  # an exact end: one more, empty block
                        yield _mono(data[:0], resampler, True)
                    break
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(path, f"cannot decode audio ({soundfile_reason(exc)})") from exc
    if read < info.frames:
        raise AudioError(path, f"truncated: header says {info.frames} frames, read {read}")


def _read_block(path: StrPath, f: sf.SoundFile, frames: int) -> np.ndarray:
    try:
        return f.read(frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(path, f"corrupt or truncated audio ({soundfile_reason(exc)})") from exc


def _mono(data: np.ndarray, resampler: soxr.ResampleStream | None, last: bool) -> np.ndarray:
    """(n, C) -> (n',) float32: channel mean, streamed resampling, clipped to [-1, 1]."""
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (n,)
    if resampler is not None:
        wave = resampler.resample_chunk(np.ascontiguousarray(wave, dtype=np.float32), last=last)
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)
