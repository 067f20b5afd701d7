"""Tests for the dynamic batch sampler: coverage, budget, determinism, resume, DDP ranks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mamba_asr.data.batching import DynamicBatchSampler


def durations(n: int = 500, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 16.0, size=n).round(3).tolist()


def padded_seconds(batch: list[int], durs: list[float]) -> float:
    return max(durs[i] for i in batch) * len(batch)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_and_under_budget(shuffle):
    durs = durations()
    sampler = DynamicBatchSampler(durs, max_seconds=60.0, shuffle=shuffle)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(durs)))
        assert all(padded_seconds(b, durs) <= 60.0 for b in batches)
        assert all(isinstance(i, int) for i in flat)


def test_buckets_keep_padding_low():
    durs = durations(2000)
    batches = list(DynamicBatchSampler(durs, max_seconds=120.0, num_buckets=20))
    padded = sum(padded_seconds(b, durs) for b in batches)
    assert padded < 1.1 * sum(durs)  # similar lengths together: little padding
    unsorted = [list(range(i, min(i + 12, len(durs)))) for i in range(0, len(durs), 12)]
    assert padded < 0.75 * sum(padded_seconds(b, durs) for b in unsorted)


def test_max_batch_size_and_too_long_utterances(caplog):
    durs = [1.0] * 20 + [30.0, 50.0]
    with caplog.at_level(logging.WARNING):
        sampler = DynamicBatchSampler(durs, max_seconds=20.0, max_batch_size=4, num_buckets=3)
    assert "2 utterances are longer than max_seconds=20 s" in caplog.text
    batches = list(sampler)
    assert [20] in batches and [21] in batches  # each alone, never dropped
    assert max(len(b) for b in batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(22))


def test_deterministic_per_seed_and_epoch():
    durs = durations()

    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = DynamicBatchSampler(durs, 60.0, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 1) == epoch_batches(0, 1)
    assert epoch_batches(0, 1) != epoch_batches(0, 2)
    assert epoch_batches(0, 1) != epoch_batches(1, 1)
    sampler = DynamicBatchSampler(durs, 60.0, shuffle=False)
    ordered = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == ordered  # no shuffle: the same batches, shortest first
    longest = [max(durs[i] for i in b) for b in ordered]
    assert longest == sorted(longest)


def test_resume_continues_with_the_next_batch():
    durs = durations()
    sampler = DynamicBatchSampler(durs, 60.0, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    taken = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["position"] == 7

    resumed = DynamicBatchSampler(durs, 60.0, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer sets the epoch again on resume: the position stays
    rest = list(resumed)
    assert taken + rest == full
    assert list(resumed) == full  # the next pass over the epoch starts from its beginning
    resumed.set_epoch(3)
    assert resumed.state_dict()["position"] == 0


def test_state_dict_with_the_trainers_count():
    """With DataLoader prefetching the trainer passes how many batches it really consumed."""
    durs = durations()
    sampler = DynamicBatchSampler(durs, 60.0)
    full = list(sampler)
    it = iter(sampler)
    for _ in range(10):  # the loader ran ahead
        next(it)
    state = sampler.state_dict(batches_done=4)
    resumed = DynamicBatchSampler(durs, 60.0)
    resumed.load_state_dict(state)
    assert list(resumed) == full[4:]
    with pytest.raises(ValueError, match="batches_done"):
        sampler.state_dict(batches_done=len(full) + 1)


def test_load_state_dict_rejects_other_settings():
    durs = durations()
    state = DynamicBatchSampler(durs, 60.0).state_dict()
    with pytest.raises(ValueError, match="max_seconds=60.0"):
        DynamicBatchSampler(durs, 50.0).load_state_dict(state)
    with pytest.raises(ValueError, match="durations_sha1"):
        DynamicBatchSampler(durs[:-1], 60.0).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_equal_length_and_disjoint(world_size, drop_last):
    durs = durations(301)
    samplers = [
        DynamicBatchSampler(durs, 60.0, seed=1, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    for sampler in samplers:
        sampler.set_epoch(4)
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1  # every rank the same number of batches
    assert all(len(s) == len(per_rank[0]) for s in samplers)
    total = samplers[0].epoch_batches(4)
    flat = [tuple(b) for batches in per_rank for b in batches]
    if drop_last:
        assert len(flat) == len(total) // world_size * world_size
        assert len(set(flat)) == len(flat)  # disjoint
        indices = [i for b in flat for i in b]
        assert len(indices) == len(set(indices))
    else:
        assert len(flat) == -(-len(total) // world_size) * world_size
        assert {i for b in flat for i in b} == set(range(len(durs)))  # all covered
        assert len(set(flat)) == len(total)  # only the fill-up batches repeat


def test_invalid_options():
    with pytest.raises(ValueError, match="durations"):
        DynamicBatchSampler([], 10.0)
    with pytest.raises(ValueError, match="durations"):
        DynamicBatchSampler([1.0, -1.0], 10.0)
    with pytest.raises(ValueError, match="max_seconds"):
        DynamicBatchSampler([1.0], 0.0)
    with pytest.raises(ValueError, match="rank"):
        DynamicBatchSampler([1.0], 10.0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatchSampler([1.0], 10.0, max_batch_size=0)


def test_groups_keep_a_steps_batches_in_one_bucket_and_match_across_world_sizes():
    durations = np.random.default_rng(3).uniform(1.0, 20.0, size=400)
    one = DynamicBatchSampler(durations, 40.0, num_buckets=8, seed=5, group_size=2)
    batches = one.epoch_batches(0)
    buckets = one.buckets
    assert sorted(i for b in batches for i in b) == list(range(400))  # each utterance once
    pairs = [(batches[i], batches[i + 1]) for i in range(0, len(batches) - 1, 2)]
    same = [len({int(buckets[x[0]]), int(buckets[y[0]])}) == 1 for x, y in pairs]
    assert sum(same) >= len(pairs) - 8  # only mixed leftovers (at most one per bucket) differ
    ranks = [DynamicBatchSampler(durations, 40.0, num_buckets=8, seed=5, group_size=2, rank=r,
                                 world_size=2) for r in range(2)]  # fmt: skip
    steps = list(zip(*(list(r) for r in ranks), strict=True))
    assert [list(s) for s in steps[: len(pairs)]] == [list(p) for p in pairs]  # then a fill-up
    plain = DynamicBatchSampler(durations, 40.0, num_buckets=8, seed=5)
    assert DynamicBatchSampler(durations, 40.0, num_buckets=8, seed=5, group_size=1).epoch_batches(
        1
    ) == plain.epoch_batches(1)
    with pytest.raises(ValueError, match="group_size"):
        DynamicBatchSampler(durations, 40.0, group_size=0)
