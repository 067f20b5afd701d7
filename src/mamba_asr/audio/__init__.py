"""Audio: file reading and resampling, log-Mel features, normalisation and augmentation."""

from __future__ import annotations

from mamba_asr.audio.augment import SpecAugment, speed_perturb
from mamba_asr.audio.features import Fbank, GlobalCMVN, mel_filterbank
from mamba_asr.audio.io import AudioError, AudioInfo, audio_info, load_audio, resample

__all__ = [
    "AudioError",
    "AudioInfo",
    "Fbank",
    "GlobalCMVN",
    "SpecAugment",
    "audio_info",
    "load_audio",
    "mel_filterbank",
    "resample",
    "speed_perturb",
]
