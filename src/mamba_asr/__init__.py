"""mamba-asr: speech recognition with Mamba (selective state-space) models on every device.

The public API is small: ``load_model()`` loads the model bundled with the package
(``mamba_asr.pretrained.DEFAULT_MODEL``), ``load_model(name_or_path)`` a bundled model by name or
a model file written by ``mamba-asr train`` (``model.pt``), and ``transcribe(model, audio)``
turns an audio file or a waveform into a ``Transcript`` (text, segments, words and tokens
with times), exactly as ``mamba-asr transcribe`` does. Streams: ``model.create_stream()``
(``mamba_asr.streaming``).
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
    from mamba_asr.transcript import Transcript


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> ASR:
    """A model in eval mode on ``device`` (default: ``mamba_asr.device.get_device()``).

    ``name_or_path``: ``None`` for the bundled default model (``mamba_asr.pretrained``), the
    name of a bundled model, or a model file (a ``model.pt`` from ``mamba-asr train``). A
    bundled model comes with its LM, which beam search fuses in unless told ``lm=None``. An
    unknown name, a missing or bad file raise a one-line ``ValueError``. ``dtype``: the
    inference precision, "fp32" (default), "fp16" or "bf16" (``ASR.set_precision``).
    """
    import torch

    from mamba_asr.asr import ASR
    from mamba_asr.device import get_device
    from mamba_asr.pretrained import bundled_lm, resolve_model

    path = resolve_model(name_or_path)
    if not isinstance(device, torch.device):
        device = get_device(device)  # None: MPS > CUDA > CPU; else a name such as "cpu"
    asr = ASR.load(path, device=device).set_precision(dtype)
    lm = bundled_lm(path)
    asr.shipped_lm = None if lm is None else str(lm)
    return asr


def transcribe(
    model: ASR,
    audio: str | os.PathLike[str] | bytes | np.ndarray | torch.Tensor,
    *,
    sample_rate: int | None = None,
    **options: Any,
) -> Transcript:
    """The ``Transcript`` of one audio (``str()`` of it is the text): what ``mamba-asr
    transcribe`` prints for the same audio and options, decoded the same way, piece by piece.

    ``audio``: a file (any rate, mono or stereo; resampled), the bytes of an audio file, or a
    mono waveform, float in [-1, 1] or integer PCM (int16, int32, int8, uint8), NumPy or torch,
    at ``sample_rate`` (default: the model's). ``options``: ``mamba_asr.decode.DecodingOptions``
    fields, e.g. ``strategy="greedy"``, ``beam_size=4``, ``lm=None`` (default: beam search with
    the model's own LM, if it ships one). Bad audio (missing, corrupt, NaN or infinite
    samples) and bad options raise a one-line ``ValueError``.
    """
    import io

    from mamba_asr.audio.io import AudioError
    from mamba_asr.decode import DecodingOptions
    from mamba_asr.transcription import transcribe_file, transcribe_waveform

    opts = DecodingOptions(**options)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        import soundfile as sf

        try:
            wave, rate = sf.read(io.BytesIO(bytes(audio)), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as exc:
            raise AudioError("bytes", f"not readable audio ({exc})") from None
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"sample_rate={sample_rate} given, but the audio bytes say {rate}")
        return transcribe_waveform(model, wave.mean(axis=1), rate, opts)
    if isinstance(audio, str) or hasattr(audio, "__fspath__"):
        if sample_rate is not None:
            raise ValueError("sample_rate is for waveforms; a file states its own")
        return transcribe_file(model, audio, opts)  # type: ignore[arg-type]
    return transcribe_waveform(model, audio, sample_rate, opts)
