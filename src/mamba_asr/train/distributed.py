"""Distributed data parallel training under ``torchrun``, and the same code path without it.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in each
process's environment. ``init_distributed`` reads them: with ``WORLD_SIZE > 1`` it starts the
process group (NCCL on CUDA, each process on ``cuda:<LOCAL_RANK>``; gloo on the CPU), otherwise
it returns a single-process context and every helper here is a no-op. So
``python -m mamba_asr train ...`` and ``torchrun --nproc_per_node=N -m mamba_asr train ...``
run the same trainer.

Conventions the trainer follows: only rank 0 (``ctx.is_main``) writes files and shows
progress; every rank builds the same model from the same seed and ``DistributedDataParallel``
broadcasts rank 0's parameters and buffers at wrap time; collective calls (``barrier``,
``gather_objects``, ``broadcast_object``) are made by every rank in the same order.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mamba_asr.device import get_device

__all__ = [
    "DistributedContext",
    "barrier",
    "broadcast_object",
    "cleanup",
    "gather_objects",
    "init_distributed",
    "unwrap",
    "wrap_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank among world_size processes, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(
    device: str | torch.device | None = None, timeout_s: float = 1800.0
) -> DistributedContext:
    """The context of this process; starts the process group when ``WORLD_SIZE > 1``.

    ``device`` as for ``mamba_asr.device.get_device``; under torchrun a CUDA device becomes
    ``cuda:<LOCAL_RANK>``. MPS cannot be used with several processes (no backend supports it).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    chosen = get_device(device)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, chosen)
    if chosen.type == "mps":
        raise ValueError("distributed training needs CUDA or the CPU; MPS has no DDP backend")
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": chosen} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d of %d on %s (%s)", rank, world_size, chosen, backend)
    return DistributedContext(rank, world_size, local_rank, chosen)


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (no-op with one process)."""
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(ctx: DistributedContext) -> None:
    """Destroy the process group (no-op with one process or when none was started). Objects in
    reference cycles that still hold the group's work (DDP's reducer among them) are collected
    first, while the group lives, rather than at the interpreter's exit: a rank of a finished
    two-node CPU run once aborted at exit (SIGABRT, a joinable thread destroyed)."""
    if ctx.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
