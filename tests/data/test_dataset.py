"""Tests for the ASR dataset and collate, alone and in a DataLoader with workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from mamba_asr.audio.io import AudioError
from mamba_asr.data.batching import DynamicBatchSampler
from mamba_asr.data.dataset import AsrDataset, BadItem, Batch, collate
from mamba_asr.data.manifest import Utterance
from mamba_asr.text.tokenizer import CharTokenizer, train_sentencepiece

TEXTS = ["HELLO WORLD", "A", "IT'S A TEST", "SPEECH", "MAMBA MODELS", "NO", "YES WE CAN"]


def make_utterances(folder: Path, rate: int = 16000) -> list[Utterance]:
    rng = np.random.default_rng(0)
    utts = []
    for i, text in enumerate(TEXTS):
        seconds = 0.2 + 0.1 * i
        wave = (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
        path = folder / f"u{i}.flac"
        sf.write(path, wave, rate)
        utts.append(Utterance(f"u{i}", path, text, seconds))
    return utts


@pytest.fixture
def utts(tmp_path: Path) -> list[Utterance]:
    return make_utterances(tmp_path)


def test_item_and_collate(utts):
    tok = CharTokenizer()
    ds = AsrDataset(utts, tok, speed_perturb=None)
    assert len(ds) == len(utts) and ds.durations == [u.duration for u in utts]
    wave, tokens, utt = ds[0]
    assert wave.dtype == torch.float32 and wave.shape == (3200,)
    assert tokens.dtype == torch.long and tok.decode(tokens.tolist()) == "HELLO WORLD"
    assert utt is utts[0]
    batch = collate([ds[0], ds[1], ds[2]])
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.waves.shape == (3, 6400) and batch.wave_lengths.tolist() == [3200, 4800, 6400]
    assert batch.targets.shape == (3, 11) and batch.target_lengths.tolist() == [11, 1, 11]
    assert (batch.waves[0, 3200:] == 0).all() and (batch.targets[1, 1:] == 0).all()
    torch.testing.assert_close(batch.waves[1, :4800], ds[1][0])
    assert batch.ids == ["u0", "u1", "u2"] and batch.texts == TEXTS[:3]
    assert batch.durations == [u.duration for u in utts[:3]]
    moved = batch.to("cpu")
    assert torch.equal(moved.targets, batch.targets) and moved.ids == batch.ids


def test_speed_perturbation_is_reproducible(utts):
    ds = AsrDataset(utts, CharTokenizer(), seed=5)
    lengths = {len(ds[i][0]) for i in range(len(ds)) for _ in range(2)}
    samples = [int(16000 * u.duration) for u in utts]
    expected = {round(n / f) for n in samples for f in (0.9, 1.0, 1.1)}
    assert lengths <= {n + d for n in expected for d in (-1, 0, 1)}
    assert torch.equal(ds[3][0], ds[3][0])  # same (seed, epoch, index): same factor
    drawn = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        drawn.append(len(ds[6][0]))
    assert len(set(drawn)) > 1  # the factor changes between epochs


def test_empty_target_and_unknown_characters_are_named(utts, tmp_path):
    bad = [*utts, Utterance("silent-1", tmp_path / "s.flac", "!!!", 1.0)]
    with pytest.raises(ValueError, match=r"utterance 'silent-1' .*not in the tokenizer"):
        AsrDataset(bad, CharTokenizer())
    tok = CharTokenizer.from_texts(["AB"])

    class Dropping(CharTokenizer):
        def encode(self, text: str) -> list[int]:
            return [i for i in super().encode(text) if i != 3]  # drops "A"

    with pytest.raises(ValueError, match=r"utterance 'a' .*encodes to no tokens"):
        AsrDataset([Utterance("a", tmp_path / "a.flac", "AA", 1.0)], Dropping(tok.alphabet))


def test_dataloader_with_workers_and_batch_sampler(utts, tmp_path):
    """Two workers, the dynamic batch sampler and a SentencePiece tokenizer (pickled over)."""
    tok = train_sentencepiece(TEXTS * 3, None, vocab_size=25)
    ds = AsrDataset(utts, tok, seed=1)
    sampler = DynamicBatchSampler(ds.durations, max_seconds=1.5, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b.ids) == sorted(u.id for u in utts)
    for batch in batches:
        assert batch.waves.shape[0] == batch.targets.shape[0] == len(batch)
        for row, n, text in zip(batch.targets, batch.target_lengths, batch.texts, strict=True):
            assert tok.decode(row[:n].tolist()) == text
    # the same waveforms as without workers (the speed factors come from seed/epoch/index)
    serial = {b.ids[0]: b for b in DataLoader(ds, batch_sampler=sampler, collate_fn=collate)}
    for batch in batches:
        torch.testing.assert_close(batch.waves, serial[batch.ids[0]].waves)


def test_bad_audio_becomes_a_bad_item_left_out_of_the_batch(utts):
    utts[1].audio.write_bytes(b"not audio at all" * 8)
    with pytest.raises(AudioError, match="u1.flac"):
        AsrDataset(utts, CharTokenizer(), speed_perturb=None)[1]
    ds = AsrDataset(utts, CharTokenizer(), speed_perturb=None, skip_bad=True)
    bad = ds[1]
    assert isinstance(bad, BadItem) and bad.utterance is utts[1]
    assert bad.problem.startswith(f"{utts[1].audio}: cannot decode")
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch.ids == ["u0", "u2"] and batch.skipped == [bad.problem]
    assert batch.waves.shape[0] == batch.targets.shape[0] == 2
    empty = collate([ds[1]])
    assert len(empty) == 0 and empty.skipped == [bad.problem]
    assert empty.waves.shape == (0, 0) and empty.targets.shape == (0, 0)
    assert empty.to("cpu").skipped == [bad.problem]
    loader = DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2)
    assert [b.skipped for b in loader] == [[bad.problem], [], []]  # across processes too
