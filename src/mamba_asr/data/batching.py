"""Dynamic batching by duration: batches of similar-length utterances under a padded-seconds budget.

How an epoch's batches are made (all from ``(seed, epoch)``, identical on every rank):

1. Utterances fall into ``num_buckets`` buckets by duration quantiles (fixed for the run).
2. With ``shuffle``, each bucket's utterances are shuffled; without it, all utterances are
   sorted by duration (tightest padding, for evaluation).
3. Each bucket is packed greedily: an utterance joins the open batch while
   ``max(duration) * count`` stays <= ``max_seconds`` (and ``count <= max_batch_size``).
   An utterance longer than ``max_seconds`` gets a batch of its own (it is never dropped:
   filter the manifest to drop long utterances), with one warning at construction.
4. With ``shuffle``, the batches of all buckets are shuffled together, in groups of
   ``group_size`` consecutive batches of one bucket (the batches of one optimizer step: the
   trainer passes ranks x gradient-accumulation steps). So the ranks of a DDP step get batches
   of similar lengths and none waits long for the slowest, and a 1-GPU run accumulating
   ``world_size`` batches per step sees the very batches of a ``world_size``-GPU run. A
   bucket's last, incomplete group goes with the other buckets' leftovers into mixed groups.
5. For DDP, the batch list is cut to a multiple of ``world_size``: with ``drop_last`` the
   last batches are dropped, otherwise the first ones are repeated to fill it up; rank ``r``
   takes batches ``r, r + world_size, ...``. So every rank gets the same number of batches and,
   apart from the repeated ones, ranks see disjoint utterances.

Resuming: ``state_dict()`` holds the epoch and the number of batches this rank has taken in
it; ``load_state_dict`` makes the next ``__iter__`` continue with exactly the next batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["DynamicBatchSampler"]

log = logging.getLogger(__name__)


class DynamicBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; see the module docstring for how they are formed.

    ``len(sampler)`` is the exact number of batches this rank gets in the current epoch
    (the whole epoch, also after a resume part-way through it).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        num_buckets: int = 20,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_batch_size: int | None = None,
        drop_last: bool = False,
        group_size: int = 1,
    ) -> None:
        self.durations = np.asarray(durations, dtype=np.float64)  # (U,) seconds, host only
        _check_options(self.durations, max_seconds, num_buckets, seed, rank, world_size)
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        self.max_seconds, self.num_buckets = float(max_seconds), num_buckets
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.max_batch_size = rank, world_size, max_batch_size
        self.buckets = _duration_buckets(self.durations, num_buckets)  # (U,) bucket index
        self.epoch, self._position = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = int((self.durations > self.max_seconds).sum())
        if too_long:
            log.warning(
                "%d utterances are longer than max_seconds=%g s; each gets a batch of its own",
                too_long,
                self.max_seconds,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields; a new epoch starts at its first
        batch (setting the current epoch again keeps a resumed position)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self._position = epoch, 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        for i in range(self._position, len(batches)):
            self._position = i + 1
            yield list(batches[i])
        self._position = 0  # the epoch is complete: iterating again repeats it

    def __len__(self) -> int:
        return len(self._rank_batches(self.epoch))

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Epoch, position and the settings that decide the batches.

        ``batches_done``: batches of this epoch the trainer has consumed. A DataLoader takes
        batches from the sampler ahead of the training loop (prefetching), so a trainer that
        checkpoints mid-epoch should pass its own count; None uses the sampler's count.
        """
        position = self._position if batches_done is None else batches_done
        if not 0 <= position <= len(self):
            raise ValueError(f"batches_done must be in [0, {len(self)}], got {position}")
        return {"epoch": self.epoch, "position": position, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; ValueError when it was saved with other settings or data."""
        for key, value in self._settings().items():
            if state.get(key) != value:
                raise ValueError(
                    f"DynamicBatchSampler state has {key}={state.get(key)!r}, this sampler "
                    f"{value!r}: the batches would differ"
                )
        self.epoch, self._position = int(state["epoch"]), int(state["position"])

    def _settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_seconds": self.max_seconds,
            "num_buckets": self.num_buckets,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "max_batch_size": self.max_batch_size,
            "drop_last": self.drop_last,
            "group_size": self.group_size,
            "durations_sha1": hashlib.sha1(self.durations.tobytes()).hexdigest(),
        }

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            batches = _split_for_ranks(self.epoch_batches(epoch), self.world_size, self.drop_last)
            self._cache = (epoch, batches[self.rank :: self.world_size])
        return self._cache[1]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` before the split between ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            buckets = (np.flatnonzero(self.buckets == b) for b in range(self.num_buckets))
            groups = [rng.permutation(bucket) for bucket in buckets]
        else:
            groups = [np.argsort(self.durations, kind="stable")]
        packed = [self._pack(group) for group in groups]
        if not self.shuffle:
            return [batch for bucket in packed for batch in bucket]
        g = self.group_size
        steps = [bucket[i : i + g] for bucket in packed for i in range(0, len(bucket) - g + 1, g)]
        rest = [batch for bucket in packed for batch in bucket[len(bucket) - len(bucket) % g :]]
        steps += [rest[i : i + g] for i in range(0, len(rest) - g + 1, g)]
        tail = rest[len(rest) - len(rest) % g :]  # an incomplete group goes last
        return [batch for i in rng.permutation(len(steps)) for batch in steps[i]] + tail

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Greedy packing of indices, in ``order``, under max_seconds and max_batch_size."""
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        limit = self.max_batch_size or math.inf
        for index in order.tolist():
            duration = self.durations[index]
            grown = max(longest, duration)
            if current and (grown * (len(current) + 1) > self.max_seconds or len(current) >= limit):
                batches.append(current)
                current, grown = [], duration
            current.append(index)
            longest = grown
        if current:
            batches.append(current)
        return batches


def _duration_buckets(durations: np.ndarray, num_buckets: int) -> np.ndarray:
    """(U,) bucket index in [0, num_buckets) by duration quantiles."""
    edges = np.quantile(durations, np.linspace(0.0, 1.0, num_buckets + 1)[1:-1])
    return np.searchsorted(edges, durations, side="right")


def _split_for_ranks(batches: list[list[int]], world_size: int, drop_last: bool) -> list[list[int]]:
    """Batches cut (drop_last) or filled up with repeats of the first ones to a multiple of
    ``world_size``."""
    if world_size == 1 or not batches:
        return batches
    if drop_last:
        return batches[: len(batches) // world_size * world_size]
    missing = -len(batches) % world_size
    repeats = [batches[i % len(batches)] for i in range(missing)]
    return batches + repeats


def _check_options(
    durations: np.ndarray, max_seconds: float, num_buckets: int, seed: int, rank: int, world: int
) -> None:
    if durations.ndim != 1 or durations.size == 0:
        raise ValueError("durations must be a non-empty sequence of seconds")
    if not np.all(np.isfinite(durations) & (durations > 0)):
        raise ValueError("durations must all be finite and > 0")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if num_buckets < 1 or seed < 0:
        raise ValueError(f"num_buckets must be >= 1 and seed >= 0, got {num_buckets}, {seed}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {rank}, {world}")
