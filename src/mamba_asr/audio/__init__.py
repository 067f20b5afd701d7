"""Audio: file reading and resampling (whole or block by block), log-Mel features (whole or
incremental), normalisation and augmentation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mamba_asr.audio.augment import SpecAugment, speed_perturb
    from mamba_asr.audio.features import Fbank, GlobalCMVN, mel_filterbank
    from mamba_asr.audio.io import AudioError, AudioInfo, audio_info, load_audio, resample
    from mamba_asr.audio.stream import StreamingFbank, read_blocks

# names -> the module that defines them, imported on first use (PEP 562), so that the
# torch-free part (``io``) imports without torch
_WHERE = {
    "AudioError": "io", "AudioInfo": "io", "Fbank": "features", "GlobalCMVN": "features",
    "SpecAugment": "augment", "StreamingFbank": "stream", "audio_info": "io",
    "load_audio": "io", "mel_filterbank": "features", "read_blocks": "io", "resample": "io",
    "speed_perturb": "augment",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


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
