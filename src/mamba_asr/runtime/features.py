"""Log-Mel features in NumPy: ``mamba_asr.audio.features.Fbank`` and its streaming form, without
PyTorch.

Shape key
    N: samples, T: frames, K: frequency bins (n_fft // 2 + 1), M: mel bins, W: window.

The same computation as ``Fbank``: frames of ``win_length`` samples every ``hop_length``, not
centred (frame t covers samples ``[t * hop, t * hop + win)``), a periodic Hann window, the
power spectrum of each frame zero-padded to ``n_fft`` points, the mel matrix,
``log(mel + log_floor)``. The spectrum is NumPy's real FFT in float64 (``Fbank`` multiplies
by the DFT bases in float32: the two agree within 1e-4 after the log; an FFT needs no BLAS
threads, which would compete with onnxruntime's), the rest float32.
``StreamingFbank`` keeps the fewer than ``win_length`` samples the next frame still needs, so
pieces of any size give the frames of the whole waveform.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Fbank", "StreamingFbank", "hann_window", "mel_segments"]


def hann_window(win_length: int) -> np.ndarray:
    """The periodic Hann window (W,) float64, as ``torch.hann_window(periodic=True)``."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)


def mel_segments(mel_fb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The mel matrix (K, M) as sums over contiguous bins: for the even and then the odd mels,
    weights (K,) (each bin's weight in the one mel of that parity it belongs to, else 0) and
    each mel's first bin, for ``np.add.reduceat``. None unless every mel is a contiguous run
    of bins that overlaps its neighbours' only (triangular filters), and the bins of the mels
    of one parity never overlap."""
    nonzero = mel_fb != 0
    if not nonzero.any(axis=0).all():
        return None
    first = nonzero.argmax(axis=0)  # (M,)
    end = mel_fb.shape[0] - nonzero[::-1].argmax(axis=0)  # (M,)
    out = []
    for parity in (0, 1):
        mels = np.arange(parity, mel_fb.shape[1], 2)
        weights = np.zeros(mel_fb.shape[0], np.float32)
        for m in mels:
            if not nonzero[first[m] : end[m], m].all():
                return None
            weights[first[m] : end[m]] = mel_fb[first[m] : end[m], m]
        if np.any(first[mels][1:] < end[mels][:-1]):
            return None
        out.append((weights, first[mels].astype(np.intp)))
    return out


class Fbank:
    """Waveform (N,) float -> log-Mel features (T, M) float32, T = 1 + (N - win) // hop
    (0 frames when N < win).

    mel_fb: (K, M) the mel matrix (``Fbank.mel_fb`` of the exported model).
    """

    def __init__(
        self,
        mel_fb: np.ndarray,
        sample_rate: int = 16000,
        win_length: int = 400,
        hop_length: int = 160,
        n_fft: int = 512,
        log_floor: float = 1e-6,
    ) -> None:
        self.sample_rate, self.n_fft = sample_rate, n_fft
        self.win_length, self.hop_length, self.log_floor = win_length, hop_length, log_floor
        self.mel_fb = np.ascontiguousarray(mel_fb, dtype=np.float32)  # (K, M)
        self.n_mels = self.mel_fb.shape[1]
        self.window = hann_window(win_length)  # (W,)
        self.segments = mel_segments(self.mel_fb)

    def num_frames(self, samples: int) -> int:
        return max(0, (samples - self.win_length) // self.hop_length + 1)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """(N,) -> (T, M) float32."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        t = self.num_frames(wave.shape[0])
        if t == 0:
            return np.zeros((0, self.n_mels), np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(wave, self.win_length)
        frames = windows[: (t - 1) * self.hop_length + 1 : self.hop_length]  # (T, W), a view
        spec = np.fft.rfft(frames * self.window, n=self.n_fft)  # (T, K) complex128
        power = (spec.real**2 + spec.imag**2).astype(np.float32)  # (T, K)
        if self.segments is None:
            mel = np.einsum("tk,km->tm", power, self.mel_fb)  # (T, M); einsum: no BLAS threads
        else:  # the triangles' sums, even and odd mels: a fifth of einsum's time
            mel = np.empty((t, self.n_mels), np.float32)
            for parity, (weights, starts) in enumerate(self.segments):
                mel[:, parity::2] = np.add.reduceat(power * weights, starts, axis=1)
        return np.log(mel + np.float32(self.log_floor))


class StreamingFbank:
    """``Fbank`` over a waveform that arrives in pieces: ``accept(wave)`` returns the new
    frames; joined, they equal ``fbank`` of the joined pieces."""

    def __init__(self, fbank: Fbank) -> None:
        self.fbank = fbank
        self.buffer = np.zeros(0, np.float32)  # (n < win,) samples not yet framed

    def accept(self, wave: np.ndarray) -> np.ndarray:
        """(n,) the next samples -> (t, M) the new frames (t may be 0)."""
        buf = np.concatenate([self.buffer, np.asarray(wave, dtype=np.float32)])
        t = self.fbank.num_frames(buf.shape[0])
        if t == 0:
            self.buffer = buf
            return np.zeros((0, self.fbank.n_mels), np.float32)
        used = (t - 1) * self.fbank.hop_length + self.fbank.win_length
        feats = self.fbank(buf[:used])
        self.buffer = buf[t * self.fbank.hop_length :].copy()
        return feats
