"""Optimizer and learning-rate schedule: AdamW with selective weight decay, Noam or constant LR.

Weight decay goes to weights only. A parameter gets none when its own name is ``A_log``, ``D``
(the Mamba blocks' state matrix and skip, kept in fp32 on purpose) or ``bias``, or when it
belongs to a normalisation module (LayerNorm, BatchNorm, GroupNorm, RMSNorm, ...), whatever
that module is called. ``decay_split`` shows the choice for a model.

Schedule ``noam``: ``lr * min(step / warmup, sqrt(warmup / step))`` at optimizer step ``step``
(1-based): a linear warm-up to ``lr`` over ``warmup`` steps, then inverse-square-root decay
(the Transformer's schedule, scaled so the peak is ``lr``). ``constant``: ``lr`` throughout.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mamba_asr.config import TrainConfig

__all__ = [
    "NO_DECAY_NAMES",
    "ScheduledLR",
    "build_optimizer",
    "build_scheduler",
    "decay_split",
    "lr_factor",
]

NO_DECAY_NAMES = ("A_log", "D", "bias")
_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, InstanceNorm*d, SyncBatchNorm
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters with and without weight decay (see the module docstring)."""
    in_norm = {
        f"{module_name}.{p}" if module_name else p
        for module_name, module in model.named_modules()
        if isinstance(module, _NORMS)
        for p, _ in module.named_parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.rsplit(".", 1)[-1] in NO_DECAY_NAMES or name in in_norm:
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters: two groups, with and without decay."""
    decay, no_decay = decay_split(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    betas = (cfg.betas[0], cfg.betas[1])
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=betas, eps=cfg.eps
    )


def lr_factor(step: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (1-based; 0 gives the first step's)."""
    if schedule == "constant":
        return 1.0
    if schedule != "noam":
        raise ValueError(f"schedule must be 'noam' or 'constant', got {schedule!r}")
    step = max(step, 1)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


class ScheduledLR(LRScheduler):
    """``lr_factor`` as a torch LR scheduler: call ``step()`` after each ``optimizer.step()``.

    Its ``state_dict`` holds only numbers and strings, so it loads with ``weights_only``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int) -> None:
        lr_factor(1, schedule, max(warmup_steps, 1))  # check the name before anything changes
        self.schedule, self.warmup_steps = schedule, max(warmup_steps, 1)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        # last_epoch counts scheduler steps: 0 before the first optimizer step (which uses it)
        factor = lr_factor(self.last_epoch + 1, self.schedule, self.warmup_steps)
        return [base * factor for base in self.base_lrs]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> ScheduledLR:
    """The schedule named by ``cfg.schedule`` over ``cfg.warmup_steps``."""
    return ScheduledLR(optimizer, cfg.schedule, cfg.warmup_steps)
