"""Padded feature/target batches for the model tests."""

from __future__ import annotations

import torch
from torch import Tensor


def padded_batch(
    feat_lengths: list[int],
    target_lengths: list[int],
    n_mels: int,
    vocab: int,
    first_id: int,
    zero_target_padding: bool,
    seed: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features with garbage (1e3-scale noise) in their padding, and random target ids in
    [first_id, vocab); their padding is 0 with ``zero_target_padding``, else random ids too."""
    gen = torch.Generator().manual_seed(seed)
    f_len, t_len = torch.tensor(feat_lengths), torch.tensor(target_lengths)
    feats = torch.randn(len(feat_lengths), max(feat_lengths), n_mels, generator=gen)
    valid = torch.arange(feats.shape[1])[None, :] < f_len[:, None]
    feats = torch.where(valid[..., None], feats, 1e3 * torch.randn(feats.shape, generator=gen))
    targets = torch.randint(
        first_id, vocab, (len(target_lengths), max(target_lengths)), generator=gen
    )
    if zero_target_padding:
        t_valid = torch.arange(targets.shape[1])[None, :] < t_len[:, None]
        targets = targets.masked_fill(~t_valid, 0)
    return feats, f_len, targets, t_len
