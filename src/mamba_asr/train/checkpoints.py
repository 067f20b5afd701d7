"""Training checkpoints: atomic saves, safe loads, listing, and averaging of model weights.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, bytes and
containers of those, so ``torch.load(weights_only=True)`` reads it: no pickled code runs when a
checkpoint is opened. The trainer's checkpoints live in ``<out_dir>/checkpoints/`` as
``step-XXXXXXXX.pt`` (the optimizer step, zero-padded to 8 digits so names sort by step).

Crash safety: ``save_checkpoint`` writes ``<name>.tmp-<pid>`` in the same folder, flushes and
fsyncs it, then renames it over ``<name>`` with ``os.replace`` (atomic on POSIX and Windows)
and fsyncs the folder. A crash at any moment leaves either the old file or the new one, never
half of one; a leftover temporary file never matches the ``step-*.pt`` pattern, so it is never
listed or loaded, and ``remove_temp_files`` clears such leftovers when training (re)starts.
The writing is ``mamba_asr.atomic``'s, which also writes the ``model.pt`` bundles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mamba_asr.atomic import TEMP_SUFFIX, atomic_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "average_checkpoints",
    "checkpoint_name",
    "checkpoint_step",
    "list_checkpoints",
    "load_checkpoint",
    "remove_temp_files",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mamba-asr-checkpoint"
_NAME = re.compile(r"^step-(\d{8,})\.pt$")

StrPath = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not of this format; one-line message."""


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after optimizer step ``step``: ``step-00001234.pt``."""
    return f"step-{step:08d}.pt"


def save_checkpoint(path: StrPath, state: Mapping[str, Any]) -> Path:
    """Write a training state atomically (see the module docstring); returns the path.

    ``state`` must hold only what ``weights_only`` loading accepts (tensors, numbers, strings,
    bytes, None, and lists/tuples/dicts of those); the format tag is added here.
    """
    return atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: StrPath, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``CheckpointError`` (one line) if the file
    is missing, unreadable, or not a mamba-asr training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, RuntimeError) for bad files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a mamba-asr training checkpoint")
    return state


def list_checkpoints(folder: StrPath) -> list[Path]:
    """The ``step-XXXXXXXX.pt`` files of ``folder``, oldest step first ([] if none or no folder).

    Temporary files of interrupted saves are never listed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: StrPath) -> int:
    """The step in a checkpoint's file name; ValueError for another name."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path}: not a checkpoint name (step-XXXXXXXX.pt)")
    return int(m[1])


def remove_temp_files(folder: StrPath) -> list[Path]:
    """Delete the ``*.tmp-<pid>`` leftovers of interrupted saves in ``folder``; returns them.

    Call it only while no other process saves into ``folder`` (the trainer does, at start).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if TEMP_SUFFIX.search(p.name) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    if removed:
        log.info("removed %d unfinished checkpoint file(s) in %s", len(removed), folder)
    return removed


def average_checkpoints(paths: Sequence[StrPath], key: str = "model") -> dict[str, torch.Tensor]:
    """Average the model weights of several checkpoints into one state_dict.

    Floating-point tensors are averaged (in float32, then cast back to their dtype); integer
    and boolean tensors (counters, buffers such as ``num_batches_tracked`` or a CMVN frame
    count) are taken from the last checkpoint. ``key`` names the state_dict inside each file
    (training checkpoints keep it under ``"model"``); every file must hold the same names and
    shapes.
    """
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):
        state = load_checkpoint(path)
        weights = state.get(key)
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path}: no {key!r} state_dict in the checkpoint")
        if i and weights.keys() != last.keys():
            diff = sorted(set(weights) ^ set(last))[:3]
            raise CheckpointError(f"{path}: its weights differ from {paths[0]}'s (e.g. {diff})")
        for name, tensor in weights.items():
            if i and tensor.shape != last[name].shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, "
                    f"{paths[0]} has {tuple(last[name].shape)}"
                )
            if tensor.is_floating_point():
                acc = tensor.float()
                total[name] = acc.clone() if i == 0 else total[name] + acc
        last = weights
    return {
        name: (total[name] / len(paths)).to(t.dtype) if name in total else t.clone()
        for name, t in last.items()
    }
