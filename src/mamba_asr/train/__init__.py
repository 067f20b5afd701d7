"""Training: the trainer, learning-rate schedules, checkpoints, metrics, DDP helpers and
knowledge distillation from a teacher (``distill``)."""

from __future__ import annotations

from mamba_asr.train.checkpoints import (
    average_checkpoints,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from mamba_asr.train.trainer import TrainResult, build_tokenizer, train

__all__ = [
    "TrainResult",
    "average_checkpoints",
    "build_tokenizer",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
