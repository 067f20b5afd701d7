"""MLX backend: the Mamba-CNN transducer, its searches and its streams in MLX (Apple's array
library; on Linux ``mlx[cpu]``). See docs/mlx.md.

``load(name_or_path)`` reads a model file (or a folder written by ``mamba-asr export mlx``)
and returns an ``MlxASR``, which ``mamba_asr.transcription.transcribe_file`` and
``mamba_asr.evaluate.evaluate`` take as they take a PyTorch ``ASR``.
"""

from __future__ import annotations

from mamba_asr.backends.mlx.asr import MlxASR, export, load

__all__ = ["MlxASR", "export", "load"]
