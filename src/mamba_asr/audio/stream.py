"""Reading audio and computing features incrementally, in memory that does not grow with length.

Shape key
    B: batch, N: samples, C: channels, T: feature frames, M: mel bins.

``read_blocks(path, sample_rate, block_seconds)`` decodes a file block by block (soundfile),
averages the channels and resamples each block with a streaming resampler (soxr's
``ResampleStream``, whose output equals ``soxr.resample`` of the whole signal sample for
sample); the blocks joined equal ``load_audio(path, sample_rate)``. ``StreamingFbank`` turns
consecutive waveform pieces into the frames ``Fbank`` gives for the whole waveform: frames are
not centred, so frame t needs only samples ``[t * hop, t * hop + win)``, and the module keeps
the fewer than ``win`` samples that the next frame still needs. The values equal the offline
frames up to float32 rounding (the convolution's summation order may depend on input length).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from mamba_asr.audio.features import Fbank
from mamba_asr.audio.io import (
    AudioError,
    check_audio_path,
    check_finite_samples,
    open_audio_info,
    soundfile_reason,
)

__all__ = ["StreamingFbank", "read_blocks"]

StrPath = str | os.PathLike[str]


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
    read = 0
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            while True:
                data = _read_block(path, f, frames)  # (n, C)
                read += data.shape[0]
                last = data.shape[0] < frames  # an exact end gives one more, empty read
                check_finite_samples(path, data)
                yield _mono(data, resampler, last)
                if last:
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


class StreamingFbank:
    """``Fbank`` over a waveform that arrives in pieces: ``accept(wave)`` returns the new frames.

    ``fbank``: the module whose frames to reproduce (its buffers' device is used). The frames of
    all ``accept`` calls joined equal ``fbank`` of the joined pieces (up to float32 rounding);
    between calls it holds fewer than ``win_length`` samples per stream.
    """

    def __init__(self, fbank: Fbank, batch: int = 1) -> None:
        self.fbank = fbank
        device = fbank.mel_fb.device
        self.buffer = torch.zeros(batch, 0, device=device)  # (B, n < win) samples not yet framed

    @torch.no_grad()
    def accept(self, wave: Tensor) -> Tensor:
        """wave: (B, n) or (n,) the next samples -> (B, t, M) float32 log-Mel of the new frames
        (t may be 0)."""
        wave = wave.reshape(self.buffer.shape[0], -1).to(self.buffer.device, torch.float32)
        buf = torch.cat([self.buffer, wave], dim=1)  # (B, n')
        t = int(self.fbank.num_frames(torch.tensor([buf.shape[1]]))[0])
        if t == 0:
            self.buffer = buf
            return buf.new_zeros(buf.shape[0], 0, self.fbank.n_mels)
        used = (t - 1) * self.fbank.hop_length + self.fbank.win_length
        feats, _ = self.fbank(buf[:, :used])  # (B, t, M)
        self.buffer = buf[:, t * self.fbank.hop_length :].clone()  # (B, < win)
        return feats
