"""Audio: file reading and resampling (whole or block by block), log-Mel features (whole or
incremental), normalisation and augmentation."""

from __future__ import annotations

from mamba_asr.audio.augment import SpecAugment, speed_perturb
from mamba_asr.audio.features import Fbank, GlobalCMVN, mel_filterbank
from mamba_asr.audio.io import AudioError, AudioInfo, audio_info, load_audio, resample
from mamba_asr.audio.stream import StreamingFbank, read_blocks

__all__ = [
    "AudioError",
    "AudioInfo",
    "Fbank",
    "GlobalCMVN",
    "SpecAugment",
    "StreamingFbank",
    "audio_info",
    "load_audio",
    "mel_filterbank",
    "read_blocks",
    "resample",
    "speed_perturb",
]
