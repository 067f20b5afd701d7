"""Training-time corruptions of the waveform: the channel and the voice a recording went through.

A model trained on clean synthetic speech hears only its engines' channel. Each function here
takes a float32 waveform (N,) at ``sample_rate`` and a ``numpy.random.Generator`` and returns a
new (N,) float32 waveform of the same length (the transcript's timing is kept):

- ``random_eq``: a smooth random equaliser (gain curve of a few random bumps and a tilt, in dB,
  over a log-frequency axis), as microphones, rooms and loudspeakers colour speech;
- ``band_limit``: a random high-pass (50-300 Hz) and low-pass (3.4-7.5 kHz) edge;
- ``telephone``: the 300-3400 Hz band at 8 kHz with G.711 mu-law 8-bit quantisation, back at
  ``sample_rate``;
- ``codec``: a round trip through a lossy codec that libsndfile writes (MP3 or Ogg Opus, low
  bitrates), via soundfile in memory;
- ``colored_noise``: white, pink or brown noise at a random SNR;
- ``random_gain``: a level change, clipped to [-1, 1] as a recorder would.

``WaveCorruptor`` applies them with the probabilities of a ``WaveAugmentConfig``; its draws come
from the generator the caller passes (the dataset seeds one per utterance and epoch, so a
resumed run sees the same corruptions). Vocal-tract-length perturbation, the voice-level warp,
works on the filterbank instead (``mamba_asr.audio.features.vtlp_warp``).
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from mamba_asr.audio.io import resample
from mamba_asr.config import WaveAugmentConfig

__all__ = [
    "WaveCorruptor",
    "band_limit",
    "codec",
    "colored_noise",
    "mu_law",
    "random_eq",
    "random_gain",
    "telephone",
]


def _apply_gain_curve(wave: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Multiply the spectrum of ``wave`` by ``gain`` (rfft bins of len(wave))."""
    spec = np.fft.rfft(wave.astype(np.float64))
    return np.fft.irfft(spec * gain, n=len(wave)).astype(np.float32)


def _freqs(n: int, sample_rate: int) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sample_rate)


def random_eq(
    wave: np.ndarray, sample_rate: int, rng: np.random.Generator, max_db: float = 10.0
) -> np.ndarray:
    """A smooth random EQ: 2-5 Gaussian bumps of up to +-``max_db`` dB (0.3-1.2 octaves wide)
    at random centres between 100 Hz and Nyquist, plus a tilt of up to +-``max_db``/2 dB over
    the band; the output keeps the input's RMS."""
    if len(wave) < 2:
        return wave.copy()
    f = np.maximum(_freqs(len(wave), sample_rate), 20.0)
    octave = np.log2(f / 1000.0)
    top = np.log2(sample_rate / 2 / 1000.0)
    db = rng.uniform(-max_db / 2, max_db / 2) * (octave - octave.min()) / (top - octave.min())
    for _ in range(rng.integers(2, 6)):
        centre = rng.uniform(np.log2(0.1), top)
        width = rng.uniform(0.3, 1.2)
        db += rng.uniform(-max_db, max_db) * np.exp(-0.5 * ((octave - centre) / width) ** 2)
    out = _apply_gain_curve(wave, 10.0 ** (db / 20.0))
    return _match_rms(out, wave)


def _match_rms(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    r_out, r_ref = float(np.sqrt(np.mean(out**2))), float(np.sqrt(np.mean(ref**2)))
    return out * (r_ref / r_out) if r_out > 1e-9 else out


def band_limit(
    wave: np.ndarray, sample_rate: int, rng: np.random.Generator,
    low_hz: tuple[float, float] = (50.0, 300.0), high_hz: tuple[float, float] = (3400.0, 7500.0),
) -> np.ndarray:  # fmt: skip
    """Cut below a random edge in ``low_hz`` and above one in ``high_hz`` (smooth 4th-order
    Butterworth-shaped magnitude, zero phase)."""
    f = _freqs(len(wave), sample_rate)
    lo = rng.uniform(*low_hz)
    hi = min(rng.uniform(*high_hz), 0.95 * sample_rate / 2)
    gain = 1.0 / np.sqrt(1.0 + (f / hi) ** 8) / np.sqrt(1.0 + (lo / np.maximum(f, 1e-3)) ** 8)
    return _apply_gain_curve(wave, gain)


def mu_law(wave: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """Quantise [-1, 1] samples on the G.711 mu-law curve with ``bits`` bits, and back."""
    x = np.clip(wave, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    levels = 2 ** (bits - 1)
    y = np.round(y * levels) / levels
    return (np.sign(y) * ((1.0 + mu) ** np.abs(y) - 1.0) / mu).astype(np.float32)


def telephone(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Narrow-band telephone speech: 300-3400 Hz, 8 kHz, mu-law 8 bit, back at the input rate."""
    band = band_limit(wave, sample_rate, rng, (250.0, 350.0), (3300.0, 3500.0))
    narrow = resample(band, sample_rate, 8000) if sample_rate != 8000 else band
    back = resample(mu_law(narrow), 8000, sample_rate) if sample_rate != 8000 else mu_law(narrow)
    return _fit_length(back, len(wave))


CODECS = (("MP3", "MPEG_LAYER_III"), ("OGG", "OPUS"))


def codec(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A round trip through MP3 or Ogg Opus at a low bitrate (libsndfile's compression level
    0.6-1.0, the high end being the lowest bitrate). Opus runs at 48 kHz: the audio goes there
    and back with soxr. MP3 needs a rate MPEG supports (8-48 kHz); the input's rate is one."""
    fmt, subtype = CODECS[rng.integers(len(CODECS))]
    level = float(rng.uniform(0.6, 1.0))
    rate = 48000 if fmt == "OGG" else sample_rate
    x = resample(wave, sample_rate, rate) if rate != sample_rate else wave
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), rate, format=fmt, subtype=subtype,
             compression_level=level)  # fmt: skip
    buf.seek(0)
    y, got = sf.read(buf, dtype="float32")
    y = y if y.ndim == 1 else y.mean(axis=1)
    y = resample(y, got, sample_rate) if got != sample_rate else y
    return _align(y, wave)


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    return (y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))).astype(np.float32)


def _align(y: np.ndarray, ref: np.ndarray, max_shift: int = 4096) -> np.ndarray:
    """``y`` shifted to line up with ``ref`` (codecs add a delay of up to a few thousand
    samples; the cross-correlation peak finds it), cut or padded to ``len(ref)``."""
    n = min(len(ref), len(y))
    if n < 64:
        return _fit_length(y, len(ref))
    k = min(max_shift, n // 2)
    size = 1 << int(np.ceil(np.log2(n + k)))
    corr = np.fft.irfft(np.fft.rfft(y[:n], size) * np.conj(np.fft.rfft(ref[:n], size)), size)
    lags = np.concatenate([corr[: k + 1], corr[-k:]])  # lag 0..k, then -k..-1
    best = int(np.argmax(lags))
    lag = best if best <= k else best - len(lags)
    y = y[lag:] if lag >= 0 else np.pad(y, (-lag, 0))
    return _fit_length(y, len(ref))


def colored_noise(
    wave: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (5.0, 30.0)
) -> np.ndarray:
    """White, pink or brown noise at an SNR drawn from ``snr_db`` (against the wave's power)."""
    n = len(wave)
    kind = rng.integers(3)
    white = rng.standard_normal(n)
    if kind:  # pink: 1/f power, brown: 1/f^2
        f = np.maximum(np.fft.rfftfreq(n), 1.0 / max(n, 1))
        white = np.fft.irfft(np.fft.rfft(white) / f ** (kind / 2.0), n=n)
    power = float(np.mean(wave.astype(np.float64) ** 2))
    noise_power = float(np.mean(white**2))
    if power <= 0 or noise_power <= 0:
        return wave.copy()
    scale = np.sqrt(power / noise_power / 10 ** (rng.uniform(*snr_db) / 10.0))
    return (wave + scale * white).astype(np.float32)


def random_gain(wave: np.ndarray, rng: np.random.Generator, db: float = 10.0) -> np.ndarray:
    """A level change of up to +-``db`` dB, clipped to [-1, 1]."""
    return np.clip(wave * 10 ** (rng.uniform(-db, db) / 20.0), -1.0, 1.0).astype(np.float32)


class WaveCorruptor:
    """The corruptions of ``config`` in a fixed order (EQ, band limit or telephone, codec,
    noise, gain), each with its probability; ``__call__(wave, rng)`` draws from ``rng``."""

    def __init__(self, config: WaveAugmentConfig, sample_rate: int) -> None:
        self.config, self.sample_rate = config, sample_rate

    @property
    def active(self) -> bool:
        c = self.config
        return any(p > 0 for p in (c.eq_p, c.band_p, c.telephone_p, c.codec_p, c.noise_p, c.gain_p))

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c, sr = self.config, self.sample_rate
        draws = rng.random(6)  # one per step, drawn whatever happens, so steps stay independent
        if draws[0] < c.eq_p:
            wave = random_eq(wave, sr, rng, c.eq_max_db)
        if draws[1] < c.telephone_p:
            wave = telephone(wave, sr, rng)
        elif draws[2] < c.band_p:
            wave = band_limit(wave, sr, rng)
        if draws[3] < c.codec_p:
            wave = codec(wave, sr, rng)
        if draws[4] < c.noise_p:
            wave = colored_noise(wave, rng, (c.noise_snr_db[0], c.noise_snr_db[1]))
        if draws[5] < c.gain_p:
            wave = random_gain(wave, rng, c.gain_db)
        return wave.astype(np.float32, copy=False)
