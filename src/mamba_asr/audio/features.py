"""Log-Mel filterbank features and global mean/variance normalisation, in plain PyTorch.

Shape key
    B: batch, N: samples, T: frames, K: frequency bins (n_fft // 2 + 1), M: mel bins, W: window.

``Fbank`` computes the short-time power spectrum as a strided ``conv1d`` whose kernels are the
windowed cosine and sine DFT bases (registered buffers): no ``torch.stft``, no complex and no
float64 tensors, so the same module runs on CPU, CUDA and MPS and exports to ONNX and Core ML as
a plain convolution. Frames are not centred (Kaldi's ``snip_edges``): frame t covers samples
``[t * hop, t * hop + win)``, so an utterance of N samples has ``T = 1 + (N - win) // hop``
frames (0 when N < win) and a frame never reads padding: a padded batch gives each utterance
exactly the frames it gives alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.modules.masks import length_mask, zero_padding

__all__ = ["Fbank", "GlobalCMVN", "mel_filterbank"]

MelScale = Literal["slaney", "htk"]


class Fbank(nn.Module):
    """Waveforms (B, N) -> log-Mel features (B, T, M), zero on padded frames.

    ``log(mel_power + log_floor)`` of the power spectrum of Hann-windowed frames of
    ``win_ms`` every ``hop_ms``, each zero-padded to ``n_fft`` points, through ``n_mels``
    triangular filters between ``f_min`` and ``f_max`` (default: Nyquist). ``mel_scale`` and
    ``norm`` follow ``librosa.filters.mel`` (defaults: Slaney scale, Slaney area norm, as
    librosa and Whisper). The buffers are derived from the arguments, so they are not
    persistent: the arguments belong in the model's config.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int = 512,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: MelScale = "slaney",
        norm: Literal["slaney"] | None = "slaney",
        log_floor: float = 1e-6,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_mels, self.n_fft = sample_rate, n_mels, n_fft
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        self.log_floor = log_floor
        _check_frame_options(self.win_length, self.hop_length, n_fft, log_floor)
        kernel = dft_kernel(self.win_length, n_fft, device=device)  # (2K, 1, W)
        self.register_buffer("dft_kernel", kernel, persistent=False)
        fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, norm, device)
        self.register_buffer("mel_fb", fb.T.contiguous(), persistent=False)  # (K, M)

    def num_frames(self, lengths: Tensor) -> Tensor:
        """(B,) sample counts -> (B,) frame counts: 1 + (N - win) // hop, 0 when N < win."""
        frames = torch.div(lengths - self.win_length, self.hop_length, rounding_mode="floor") + 1
        return frames.clamp_min(0)

    def forward(
        self, wave: Tensor, lengths: Tensor | None = None, warp: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """wave: (B, N) float, lengths: (B,) valid samples or None (all N); warp: (B,)
        vocal-tract-length warp factors (``vtlp_matrix``) or None (no warp).

        Returns feats (B, T, M) float32, T = 1 + (N - win) // hop (at least 1), zero on frames
        past each utterance's own count, and lengths (B,) long of valid frames. Computed in
        float32 with autocast off, whatever the caller's autocast.
        """
        if lengths is None:
            lengths = torch.full(wave.shape[:1], wave.shape[1], device=wave.device)
        frame_lengths = self.num_frames(lengths.to(wave.device))
        if wave.shape[1] < self.win_length:  # no full frame: one all-padding frame
            wave = F.pad(wave, (0, self.win_length - wave.shape[1]))
        with _no_autocast(wave.device.type):  # bf16 DFTs would lose the quiet bins
            feats = self._log_mel(wave.float(), warp)
        mask = length_mask(frame_lengths, feats.shape[1], feats.device)  # (B, T)
        return zero_padding(feats, mask), frame_lengths

    def _log_mel(self, wave: Tensor, warp: Tensor | None = None) -> Tensor:
        """(B, N) float32 -> (B, T, M) log-Mel of every frame (padding not yet zeroed)."""
        spec = F.conv1d(wave.unsqueeze(1), self.dft_kernel, stride=self.hop_length)  # (B, 2K, T)
        bins = self.mel_fb.shape[0]
        power = spec[:, :bins].square() + spec[:, bins:].square()  # (B, K, T)
        fb = self.mel_fb  # (K, M)
        if warp is not None:  # one warped filterbank per utterance: (B, K, K) @ (K, M)
            fb = torch.matmul(vtlp_matrix(warp.float(), bins, self.sample_rate), fb)
        mel = torch.matmul(power.transpose(1, 2), fb)  # (B, T, M)
        return torch.log(mel + self.log_floor)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, win={self.win_length}, "
            f"hop={self.hop_length}, n_fft={self.n_fft}"
        )


def vtlp_matrix(warp: Tensor, bins: int, sample_rate: int, boundary_hz: float = 4800.0) -> Tensor:
    """Vocal-tract-length perturbation (Jaitly and Hinton, 2013) as a linear map of power
    spectra: (B,) warp factors -> (B, K, K) ``R`` with ``warped = power @ R`` for power (.., K)
    over ``bins`` = K evenly spaced bins from 0 to Nyquist.

    The frequency map is piecewise linear: f -> warp * f up to the boundary
    ``boundary_hz * min(warp, 1) / warp``, then the straight line to Nyquist (which stays put),
    so warp > 1 moves formants up (a shorter vocal tract), < 1 down. Each output bin takes the
    power at its source frequency, interpolated linearly between the two nearest input bins.
    Warp 1 gives the identity.
    """
    nyquist = sample_rate / 2.0
    f = torch.linspace(0.0, nyquist, bins, device=warp.device, dtype=torch.float64)
    a = warp.to(torch.float64)[:, None]  # (B, 1)
    knot = boundary_hz * torch.clamp(a, max=1.0) / a  # input frequency of the bend
    bend = a * knot  # its output frequency
    src = torch.where(
        f <= bend, f / a, nyquist - (nyquist - knot) / (nyquist - bend) * (nyquist - f)
    )
    pos = (src / nyquist * (bins - 1)).clamp(0, bins - 1)  # (B, K) fractional source bin
    lo = pos.floor().long().clamp(max=bins - 2)
    frac = (pos - lo).to(warp.dtype)
    r = torch.zeros(warp.shape[0], bins, bins, device=warp.device, dtype=warp.dtype)
    r.scatter_(1, lo[:, None, :], (1.0 - frac)[:, None, :])
    r.scatter_add_(1, (lo + 1)[:, None, :], frac[:, None, :])
    return r


class GlobalCMVN(nn.Module):
    """Global mean and variance normalisation of features (B, T, M), one mean/std per mel bin.

    ``fit`` sets the ``mean``, ``std`` and ``frames`` buffers (persistent: they travel in the
    checkpoint) from a pass over training features. Before fitting, mean 0 and std 1 make it
    the identity (``is_fitted`` says which).
    """

    def __init__(
        self, n_mels: int = 80, std_floor: float = 1e-5, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.std_floor = std_floor
        self.register_buffer("mean", torch.zeros(n_mels, device=device))
        self.register_buffer("std", torch.ones(n_mels, device=device))
        self.register_buffer("frames", torch.zeros((), dtype=torch.long, device=device))

    @property
    def is_fitted(self) -> bool:
        return bool(self.frames > 0)

    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[Tensor, Tensor]]) -> GlobalCMVN:
        """Statistics of the valid frames of every (feats (B, T, M), lengths (B,)) batch.

        Streams in float32 with Chan's pairwise update of (count, mean, sum of squared
        deviations), which stays accurate over millions of frames without float64.
        Raises ``ValueError`` when the batches hold no valid frame.
        """
        count, mean, m2 = 0, self.mean.new_zeros(self.mean.shape), self.mean.new_zeros(())
        for feats, lengths in batches:
            mask = length_mask(lengths, feats.shape[1], feats.device)  # (B, T)
            x = feats[mask].float().to(self.mean.device)  # (frames, M)
            if x.shape[0] == 0:
                continue
            count, mean, m2 = _merge_stats(count, mean, m2, x)
        if count == 0:
            raise ValueError("GlobalCMVN.fit: the batches hold no valid frames")
        self.mean.copy_(mean)
        self.std.copy_((m2 / count).sqrt().clamp_min(self.std_floor))
        self.frames.fill_(count)
        return self

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """feats: (B, T, M), lengths: (B,) or None -> (B, T, M) normalised, padded frames 0."""
        x = (feats - self.mean) / self.std
        if lengths is None:
            return x
        return zero_padding(x, length_mask(lengths, x.shape[1], x.device))


def _merge_stats(count: int, mean: Tensor, m2: Tensor, x: Tensor) -> tuple[int, Tensor, Tensor]:
    """Merge the (count, mean (M,), m2 (M,)) of frames seen so far with new frames x (n, M)."""
    n = x.shape[0]
    batch_mean = x.mean(dim=0)  # (M,)
    batch_m2 = (x - batch_mean).square().sum(dim=0)  # (M,)
    total = count + n
    delta = batch_mean - mean
    mean = mean + delta * (n / total)
    m2 = m2 + batch_m2 + delta.square() * (count * n / total)
    return total, mean, m2


def dft_kernel(win_length: int, n_fft: int, device: torch.device | str | None = None) -> Tensor:
    """Periodic-Hann-windowed real DFT bases as conv1d weights: (2K, 1, W), cosines then sines.

    Row k (< K) of the cosine half is ``w[n] cos(2 pi k n / n_fft)``; the phase index
    ``k * n mod n_fft`` is formed in integers so float32 keeps full accuracy.
    """
    bins = n_fft // 2 + 1
    k = torch.arange(bins, device=device)[:, None]  # (K, 1)
    n = torch.arange(win_length, device=device)[None, :]  # (1, W)
    phase = (k * n % n_fft).float() * (2 * math.pi / n_fft)  # (K, W)
    window = torch.hann_window(win_length, periodic=True, device=device)  # (W,)
    kernel = torch.cat([phase.cos() * window, -phase.sin() * window])  # (2K, W)
    return kernel.unsqueeze(1)  # (2K, 1, W)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: MelScale = "slaney",
    norm: Literal["slaney"] | None = "slaney",
    device: torch.device | str | None = None,
) -> Tensor:
    """Triangular mel filters (M, K) in float32, as ``librosa.filters.mel`` computes them.

    ``mel_scale="slaney"``: linear below 1 kHz, logarithmic above (librosa's default);
    ``"htk"``: 2595 log10(1 + f / 700). ``norm="slaney"`` divides each triangle by its width
    in Hz (constant energy per band); ``None`` keeps peaks at 1.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    if mel_scale not in ("slaney", "htk") or norm not in ("slaney", None):
        raise ValueError(
            f"mel_scale must be 'slaney' or 'htk' and norm 'slaney' or None, "
            f"got {mel_scale!r}, {norm!r}"
        )
    bins = n_fft // 2 + 1
    fft_freqs = torch.arange(bins, device=device).float() * (sample_rate / n_fft)  # (K,)
    lo, hi = (_hz_to_mel(torch.tensor(f, device=device), mel_scale) for f in (f_min, f_max))
    mels = torch.linspace(0.0, 1.0, n_mels + 2, device=device) * (hi - lo) + lo  # (M + 2,)
    edges = _mel_to_hz(mels, mel_scale)  # (M + 2,) Hz
    widths = edges.diff()  # (M + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (M + 2, K)
    rising = -ramps[:-2] / widths[:-1, None]  # (M, K)
    falling = ramps[2:] / widths[1:, None]  # (M, K)
    weights = torch.minimum(rising, falling).clamp_min(0.0)  # (M, K)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


_F_SP, _MIN_LOG_HZ, _MIN_LOG_MEL, _LOGSTEP = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27


def _hz_to_mel(hz: Tensor, scale: MelScale) -> Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    log_part = _MIN_LOG_MEL + torch.log(hz.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: Tensor, scale: MelScale) -> Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel.clamp_min(_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off for this device type (where autocast exists: not on ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _check_frame_options(win: int, hop: int, n_fft: int, log_floor: float) -> None:
    if win < 1 or hop < 1:
        raise ValueError(f"win_ms and hop_ms must give at least one sample, got {win}, {hop}")
    if n_fft < win:
        raise ValueError(f"n_fft ({n_fft}) must be >= the window length in samples ({win})")
    if log_floor <= 0:
        raise ValueError(f"log_floor must be > 0, got {log_floor}")
