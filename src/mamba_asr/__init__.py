"""mamba-asr: speech recognition with Mamba (selective state-space) models on every device.

The public API is small: ``load_model()`` loads the model bundled with the package
(``mamba_asr.pretrained.DEFAULT_MODEL``), ``load_model(name_or_path)`` a bundled model by name or
a model file written by ``mamba-asr train`` (``model.pt``), and ``transcribe(model, audio)``
turns an audio file or a 16 kHz waveform into text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "transcribe"]

if TYPE_CHECKING:
    import os

    import numpy as np
    import torch

    from mamba_asr.asr import ASR


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> ASR:
    """A model in eval mode on ``device`` (default: ``mamba_asr.device.get_device()``).

    ``name_or_path``: ``None`` for the bundled default model (``mamba_asr.pretrained``), the
    name of a bundled model, or a model file (a ``model.pt`` from ``mamba-asr train``). An
    unknown name, a missing or bad file raise a one-line ``ValueError``.
    """
    import torch

    from mamba_asr.asr import ASR
    from mamba_asr.device import get_device
    from mamba_asr.pretrained import resolve_model

    path = resolve_model(name_or_path)
    if not isinstance(device, torch.device):
        device = get_device(device)  # None: MPS > CUDA > CPU; else a name such as "cpu"
    return ASR.load(path, device=device)


def transcribe(
    model: ASR, audio: str | os.PathLike[str] | np.ndarray | torch.Tensor, **options: Any
) -> str:
    """Text of one utterance: a file (any rate, mono or stereo; resampled) or a mono waveform at
    the model's sample rate. ``options``: ``mamba_asr.decode.DecodingOptions`` fields, e.g.
    ``strategy="greedy"`` or ``beam_size=4``."""
    import numpy as np
    import torch

    from mamba_asr.audio import load_audio
    from mamba_asr.decode import DecodingOptions

    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        audio = load_audio(audio, model.sample_rate)
    wave = torch.as_tensor(
        np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio
    )
    if wave.dim() != 1:
        raise ValueError(f"audio must be a mono waveform (N,), got shape {tuple(wave.shape)}")
    device = next(model.parameters()).device
    lengths = torch.tensor([wave.shape[0]], device=device)
    opts = DecodingOptions(**options) if options else None
    return model.transcribe_batch(wave.float()[None].to(device), lengths, opts)[0]
