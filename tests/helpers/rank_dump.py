"""What each rank of a training run ended with, for the DDP checks.

While ``recording_ranks(folder)`` is open, every call of ``mamba_asr.train.train`` (also the
command line's) makes each rank save ``folder/rank<r>.pt`` when it returns: its last ``step``,
its final weights (``model``) and the ids of the utterances of its training batches (``ids``).
Ranks that trained on different batches can only end with equal weights if their gradients
were averaged at every step.

It records through names the trainer looks up in its module while it runs: ``wrap_model``
hands over the model the rank trains, ``DynamicBatchSampler`` the batches (the training sampler
is the one that shuffles: validation batches are left out).

``python -m helpers.rank_dump FOLDER ARGS...`` runs the command line ``mamba-asr ARGS`` so
(under torchrun in tests/train/test_distributed.py; tests/ must be on PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import mamba_asr.train
from mamba_asr.cli import main
from mamba_asr.data import DynamicBatchSampler, read_manifest
from mamba_asr.train import trainer


@contextlib.contextmanager
def recording_ranks(folder: Path) -> Iterator[None]:
    models: list[torch.nn.Module] = []
    indices: list[int] = []
    real_train, real_wrap = mamba_asr.train.train, trainer.wrap_model

    class RecordingSampler(DynamicBatchSampler):
        def __iter__(self) -> Iterator[list[int]]:
            for batch in super().__iter__():
                if self.shuffle:
                    indices.extend(batch)
                yield batch

    def wrap_model(model: torch.nn.Module, ctx: Any) -> torch.nn.Module:
        models.append(model)
        return real_wrap(model, ctx)

    def train(recipe: Any, train_manifest: Any, *args: Any, **kwargs: Any) -> Any:
        models.clear()
        indices.clear()
        result = real_train(recipe, train_manifest, *args, **kwargs)
        utts = read_manifest(train_manifest)
        dump = {"step": result.step, "model": models[-1].state_dict(),
                "ids": [utts[i].id for i in indices]}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(dump, folder / f"rank{result.rank}.pt")
        return result

    patches = [(mamba_asr.train, "train", train), (trainer, "wrap_model", wrap_model),
               (trainer, "DynamicBatchSampler", RecordingSampler)]  # fmt: skip
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


if __name__ == "__main__":
    with recording_ranks(Path(sys.argv[1])):
        code = main(sys.argv[2:])
    sys.exit(code)
