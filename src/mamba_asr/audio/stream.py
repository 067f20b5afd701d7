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

from collections.abc import Sequence

import torch
from torch import Tensor

from mamba_asr.audio.features import Fbank
from mamba_asr.audio.io import read_blocks  # defined there: it needs no torch

__all__ = ["StreamingFbank", "read_blocks"]


class StreamingFbank:
    """``Fbank`` over a waveform that arrives in pieces: ``accept(wave)`` returns the new frames.

    ``fbank``: the module whose frames to reproduce (its buffers' device is used). The frames of
    all ``accept`` calls joined equal ``fbank`` of the joined pieces (up to float32 rounding);
    between calls it holds fewer than ``win_length`` samples per stream. ``accept_many`` serves
    many single-stream instances, pieces of different lengths, in one batched call.
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

    @staticmethod
    @torch.no_grad()
    def accept_many(streams: Sequence[StreamingFbank], waves: Sequence[Tensor]) -> list[Tensor]:
        """``[s.accept(w) for s, w in zip(streams, waves)]`` for single-stream instances of one
        ``Fbank``, their frames computed in one batched call: waves[i] (n_i,) -> (1, t_i, M).
        A frame never reads past its own samples, so each stream gets the frames it gets alone
        (up to float32 rounding)."""
        if not streams:
            return []
        fbank = streams[0].fbank
        if any(s.fbank is not fbank or s.buffer.shape[0] != 1 for s in streams):
            raise ValueError("accept_many: single-stream StreamingFbanks of one Fbank only")
        device = streams[0].buffer.device
        bufs = [
            torch.cat([s.buffer[0], w.reshape(-1).to(device, torch.float32)])
            for s, w in zip(streams, waves, strict=True)
        ]  # each (n_i,)
        lengths = torch.tensor([b.shape[0] for b in bufs])
        frames = fbank.num_frames(lengths).tolist()
        most = max(frames)
        feats = None
        if most:
            used = (most - 1) * fbank.hop_length + fbank.win_length
            batch = bufs[0].new_zeros(len(bufs), used)  # (B, n), zero after each stream's end
            for i, b in enumerate(bufs):
                n = min(b.shape[0], used)
                batch[i, :n] = b[:n]
            feats, _ = fbank(batch, lengths.clamp_max(used).to(device))  # (B, t, M)
        out = []
        for i, (s, b) in enumerate(zip(streams, bufs, strict=True)):
            s.buffer = b[frames[i] * fbank.hop_length :].clone()[None]  # (1, < win)
            if feats is None or frames[i] == 0:
                out.append(b.new_zeros(1, 0, fbank.n_mels))
            else:
                out.append(feats[i : i + 1, : frames[i]])
        return out
