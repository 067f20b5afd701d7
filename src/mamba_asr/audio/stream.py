"""Reading audio and computing features incrementally, in memory that does not grow with length.

Shape key
    B: batch, N: samples, C: channels, T: feature frames, M: mel bins.

``read_blocks(path, sample_rate, block_seconds)`` (defined in ``audio.io``, which needs no
torch) decodes a file block by block (soundfile),
averages the channels and resamples each block with a streaming resampler (soxr's
``ResampleStream``, whose output equals ``soxr.resample`` of the whole signal sample for
sample); the blocks joined equal ``load_audio(path, sample_rate)``. ``StreamingFbank`` turns
consecutive waveform pieces into the frames ``Fbank`` gives for the whole waveform: frames are
not centred, so frame t needs only samples ``[t * hop, t * hop + win)``, and the module keeps
the fewer than ``win`` samples that the next frame still needs. The values equal the offline
frames up to float32 rounding (the convolution's summation order may depend on input length).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_asr.audio.features import Fbank
from mamba_asr.audio.io import read_blocks  # defined there: it needs no torch

__all__ = ["StreamingFbank", "read_blocks"]


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
