"""ASR dataset: audio and token ids of manifest utterances, and the collate into a padded batch.

Shape key
    B: batch, N: samples, S: target tokens.

Features are not computed here: ``Batch.waves`` go to the device and the model's ``Fbank``
(a module, so it runs on the GPU and is exported with the model).

Bad audio: with ``skip_bad`` an item whose file does not load is a ``BadItem`` (the utterance
and the one-line problem) and ``collate`` leaves it out of the batch, listing it in
``Batch.skipped``: the same utterances are left out on every run, in DataLoader workers too, and
the training process decides what to report (a worker's exception would reach it as an
unreadable ``RuntimeError``). A batch of only bad items has no rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mamba_asr.audio.augment import speed_perturb as perturb
from mamba_asr.audio.corrupt import WaveCorruptor
from mamba_asr.audio.io import AudioError, load_audio
from mamba_asr.config import WaveAugmentConfig
from mamba_asr.data.manifest import Utterance
from mamba_asr.text.tokenizer import PAD_ID, Tokenizer

__all__ = ["AsrDataset", "BadItem", "Batch", "Item", "collate"]

Item = tuple[Tensor, Tensor, Utterance]  # waveform (N,) float32, token ids (S,) long, utterance


class BadItem(NamedTuple):
    """An item whose audio did not load (``AsrDataset(skip_bad=True)``)."""

    utterance: Utterance
    problem: str  # the AudioError's one line, "<file>: <problem>"


@dataclass
class Batch:
    """A padded batch. waves (B, N) float32, zero-padded; wave_lengths (B,) long samples;
    targets (B, S) long, padded with ``PAD_ID`` (0); target_lengths (B,) long; then the
    utterances' ids, transcripts and manifest durations (seconds); ``skipped``: the problems
    of the items left out (bad audio, see the module docstring)."""

    waves: Tensor
    wave_lengths: Tensor
    targets: Tensor
    target_lengths: Tensor
    ids: list[str]
    texts: list[str]
    durations: list[float]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The tensors moved to ``device`` (a new Batch; the lists are shared)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (``DataLoader(pin_memory=True)`` calls this)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        tensors = ("waves", "wave_lengths", "targets", "target_lengths")
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in tensors})


class AsrDataset(Dataset[Item]):
    """Item ``i``: (waveform (N,) float32 at ``sample_rate``, token ids (S,) long, utterance).

    Transcripts are encoded once, here, so a transcript the tokenizer rejects or that encodes
    to no tokens (CTC cannot train on it) raises ``ValueError`` naming the utterance before
    training starts. With ``speed_perturb`` (factors, e.g. (0.9, 1.0, 1.1)), each item is
    played at a factor drawn from ``(seed, epoch, index)``: reproducible whatever the number
    of DataLoader workers. Call ``set_epoch`` each epoch (with ``persistent_workers`` the
    workers keep the epoch they started with). Speed 0.9 makes an utterance 11 % longer than
    its manifest duration: leave that headroom in the batch sampler's ``max_seconds``.
    ``skip_bad``: an item whose audio does not load is a ``BadItem`` (else ``AudioError``).
    ``wave_augment``: corruptions of the waveform after the speed change
    (``mamba_asr.audio.corrupt``), drawn from ``(seed, epoch, index)`` as well.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer,
        sample_rate: int = 16000,
        speed_perturb: Sequence[float] | None = (0.9, 1.0, 1.1),
        seed: int = 0,
        skip_bad: bool = False,
        wave_augment: WaveAugmentConfig | None = None,
    ) -> None:
        self.utterances = list(utterances)
        corrupt = WaveCorruptor(wave_augment, sample_rate) if wave_augment else None
        self.corrupt = corrupt if corrupt is not None and corrupt.active else None
        self.sample_rate, self.seed, self.epoch = sample_rate, seed, 0
        self.skip_bad = skip_bad
        self.speed_factors = tuple(speed_perturb) if speed_perturb else None
        if self.speed_factors and min(self.speed_factors) <= 0:
            raise ValueError(f"speed_perturb factors must be > 0, got {self.speed_factors}")
        self._tokens, self._offsets = _encode_all(self.utterances, tokenizer)

    @property
    def durations(self) -> list[float]:
        """Manifest durations (seconds), in item order: the batch sampler's input."""
        return [utt.duration for utt in self.utterances]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Item | BadItem:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.audio, self.sample_rate)
        except AudioError as exc:
            if not self.skip_bad:
                raise
            return BadItem(utt, str(exc))
        if self.speed_factors:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            factor = self.speed_factors[rng.integers(len(self.speed_factors))]
            wave = perturb(wave, self.sample_rate, factor)
        if self.corrupt is not None:
            wave = self.corrupt(wave, np.random.default_rng([self.seed, self.epoch, index, 1]))
        start, end = self._offsets[index], self._offsets[index + 1]
        tokens = torch.from_numpy(self._tokens[start:end]).long()
        return torch.from_numpy(wave), tokens, utt


def collate(items: Sequence[Item | BadItem]) -> Batch:
    """Pad a list of items into a ``Batch`` (waves with 0.0, targets with ``PAD_ID``); a
    ``BadItem`` is left out and its problem listed in ``Batch.skipped``."""
    if not items:
        raise ValueError("collate: no items")
    skipped = [item.problem for item in items if isinstance(item, BadItem)]
    good = [item for item in items if not isinstance(item, BadItem)]
    if not good:
        return _empty_batch(skipped)
    waves, tokens, utts = zip(*good, strict=True)
    return Batch(
        waves=_pad([w.float() for w in waves], 0.0),
        wave_lengths=torch.tensor([len(w) for w in waves], dtype=torch.long),
        targets=_pad(list(tokens), PAD_ID),
        target_lengths=torch.tensor([len(t) for t in tokens], dtype=torch.long),
        ids=[u.id for u in utts],
        texts=[u.text for u in utts],
        durations=[u.duration for u in utts],
        skipped=skipped,
    )


def _empty_batch(skipped: list[str]) -> Batch:
    """A batch of no rows: (0, 0) waves and targets."""
    none = torch.zeros(0, dtype=torch.long)
    return Batch(torch.zeros(0, 0), none, none.view(0, 0), none, [], [], [], skipped)


def _pad(tensors: list[Tensor], value: float) -> Tensor:
    """(L_i,) tensors -> (B, max L_i), filled with ``value`` past each length."""
    out = tensors[0].new_full((len(tensors), max(len(t) for t in tensors)), value)
    for row, t in zip(out, tensors, strict=True):
        row[: len(t)] = t
    return out


def _encode_all(utterances: list[Utterance], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """All transcripts' ids, concatenated (int32), and (U + 1,) offsets into them."""
    ids: list[int] = []
    offsets = [0]
    for utt in utterances:
        try:
            tokens = tokenizer.encode(utt.text)
        except ValueError as exc:
            raise ValueError(f"utterance {utt.id!r} ({utt.audio}): {exc}") from None
        if not tokens:
            raise ValueError(
                f"utterance {utt.id!r} ({utt.audio}): transcript {utt.text!r} encodes to no "
                "tokens, and CTC cannot train on an empty target"
            )
        ids.extend(tokens)
        offsets.append(len(ids))
    return np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64)
