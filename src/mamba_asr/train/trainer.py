"""One trainer for every model type: ``train(recipe, train_manifest, valid_manifest, out_dir)``.

The run folder ``out_dir`` holds everything a run makes, and nothing is ever overwritten:

- ``train.lock``: the pid and host of the process training in it (rank 0), while it trains.
  Another ``train`` on the folder is refused, naming them; a lock left by a killed run (its
  pid no longer runs on this host) is taken over with a warning.
- ``recipe.yaml``: the recipe, written once when the run starts. Running again on the same
  folder resumes the run; a recipe that differs in any key is refused, naming the key.
- ``tokenizer/``: characters, or a SentencePiece model trained on the training transcripts.
- ``checkpoints/step-XXXXXXXX.pt``: the full training state (model, optimizer, schedule,
  sampler position, every rank's RNG states, step, best-WER list, recipe) at the end of each
  epoch and every ``train.checkpoint_every_steps`` optimizer steps. The newest one and the
  ``train.keep_best`` best by validation WER are kept, older ones deleted.
- ``metrics.csv``, ``tensorboard/`` (when installed), ``curves.png`` (when matplotlib is),
  ``train.log``.
- ``model.pt``: at the end, the average of the ``train.average`` best checkpoints as an
  ``ASR`` bundle (``mamba_asr.asr``), the file to transcribe with.

Exact resume: a run restarted from a checkpoint continues with the very batch, random numbers
and optimizer state the uninterrupted run would have had, so its losses are the same. That
holds because every random draw is either restored (python, numpy, torch and CUDA generators
of each rank) or derived from the seed, epoch and item (batches, speed perturbation,
DataLoader worker seeds, which come from a generator of their own).

Distributed: under ``torchrun`` every rank runs this same function (see
``mamba_asr.train.distributed``); rank 0 alone touches ``out_dir`` and broadcasts the
tokenizer and the resumed state, so the ranks need not share a file system (except for the
manifests' audio).

Knowledge distillation: with ``train.kd.teacher`` the loss adds ``train.kd.weight`` times the
KL divergence of the student's distributions from a frozen teacher's (``mamba_asr.train.distill``;
the teacher lives outside DDP and the checkpoints; ``recipe.yaml`` records its file by absolute
path and SHA-256, so a resume finds it and refuses a changed one). ``metrics.csv`` logs the KD
term as ``kd_loss`` beside ``train_loss``, the student's own loss.

``MAMBA_ASR_PROFILE=DIR,FIRST,COUNT`` records COUNT optimizer steps after step FIRST with
``torch.profiler`` on every rank (see ``_StepProfiler``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from mamba_asr.asr import ASR, tokenizer_from_files, tokenizer_to_files
from mamba_asr.atomic import atomic_write_text
from mamba_asr.config import (
    ConfigError,
    RecipeConfig,
    TokenizerConfig,
    config_differences,
    from_dict,
    to_dict,
)
from mamba_asr.data.batching import DynamicBatchSampler
from mamba_asr.data.dataset import AsrDataset, Batch, collate
from mamba_asr.data.manifest import ManifestError, Utterance, read_manifest
from mamba_asr.decode.search import DecodingOptions, decode_batch
from mamba_asr.device import autocast
from mamba_asr.files import FolderLock, lock_folder, read_text
from mamba_asr.text.error_rates import error_rates
from mamba_asr.text.tokenizer import (
    LIBRISPEECH_ALPHABET,
    CharTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from mamba_asr.train.checkpoints import (
    average_checkpoints,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    remove_temp_files,
    save_checkpoint,
)
from mamba_asr.train.distill import (
    Teacher,
    check_teacher,
    frame_ms,
    load_teacher_bundle,
    pin_teacher,
)
from mamba_asr.train.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    init_distributed,
    wrap_model,
)
from mamba_asr.train.feature_kd import FeatureTeacher, open_store
from mamba_asr.train.metrics import MetricsLog
from mamba_asr.train.schedules import build_optimizer, build_scheduler

__all__ = ["PROFILE_ENV", "TrainResult", "build_tokenizer", "train"]

log = logging.getLogger(__name__)

PROFILE_ENV = "MAMBA_ASR_PROFILE"
RECIPE_FILE = "recipe.yaml"
LOCK_FILE = "train.lock"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.pt"

Tokenizer = CharTokenizer | SentencePieceTokenizer


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` did: the final step and epoch count, whether all epochs are done, the
    averaged model's path (None until the run is finished, and on ranks other than 0), and
    the validation WER of the best checkpoint (None before the first validation), and the
    training speed: ``throughput`` holds (step, seconds of audio per second over every rank)
    for each ``train.log_every`` window of this call (the first one includes start-up), and
    ``skipped_audio``: how many audio files this call left out because they did not load."""

    out_dir: Path
    step: int
    epochs_done: int
    finished: bool
    model_path: Path | None
    best_wer: float | None
    rank: int = 0
    throughput: tuple[tuple[int, float], ...] = ()
    skipped_audio: int = 0


class _BadAudio:
    """The audio files the loaders left out (``Batch.skipped``): each reported once, with one
    WARNING line naming the file and the problem, or with ``strict`` the first one raised."""

    def __init__(self, strict: bool) -> None:
        self.strict, self.seen = strict, set[str]()

    def note(self, batch: Batch) -> None:
        for problem in batch.skipped:
            if self.strict:
                raise ValueError(f"{problem} (--strict: stopped at the first bad audio file)")
            if problem not in self.seen:
                self.seen.add(problem)
                log.warning("skipped (bad audio): %s", problem)


@dataclass
class _Progress:
    """The training state that is not inside a module, optimizer or sampler."""

    step: int = 0
    epoch: int = 0  # the epoch being run (or the next one, at an epoch boundary)
    batches_done: int = 0  # batches of ``epoch`` consumed by this rank
    best: list[dict[str, Any]] = field(default_factory=list)  # {"step", "wer", "file"}
    # loss sum, batches, KD loss sum (``train.kd``)
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


# --- run folder, tokenizer, resume state (rank 0) -------------------------------------------


def build_tokenizer(cfg: TokenizerConfig, model_vocab: int, texts: list[str]) -> Tokenizer:
    """The tokenizer a recipe asks for (not saved); ConfigError naming the key if it cannot
    give ``model_vocab`` ids."""
    sentencepiece = cfg.kind in ("unigram", "bpe")
    if cfg.path is not None:
        tokenizer = load_tokenizer(cfg.path)
        if isinstance(tokenizer, SentencePieceTokenizer) != sentencepiece:
            raise ConfigError(
                f"tokenizer.path {cfg.path} holds a {type(tokenizer).__name__}, but "
                f"tokenizer.kind is {cfg.kind!r}"
            )
    elif sentencepiece:
        size = cfg.vocab_size or model_vocab
        tokenizer = train_sentencepiece(texts, None, size, model_type=cfg.kind)
    else:
        tokenizer = CharTokenizer(cfg.alphabet or LIBRISPEECH_ALPHABET)
        if cfg.vocab_size is not None and cfg.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"tokenizer.vocab_size ({cfg.vocab_size}) does not match the {tokenizer.vocab_size}"
                " ids of the character alphabet (3 special ids + the alphabet)"
            )
    if tokenizer.vocab_size != model_vocab:
        raise ConfigError(
            f"model.vocab_size ({model_vocab}) must equal the {cfg.kind} tokenizer's "
            f"{tokenizer.vocab_size} ids (change model.vocab_size or the tokenizer section)"
        )
    return tokenizer


def _check_recipe(out_dir: Path, recipe: RecipeConfig) -> bool:
    """True if ``out_dir`` already holds this recipe's run; ConfigError if it holds another."""
    path = out_dir / RECIPE_FILE
    if not path.is_file():
        return False
    try:
        saved = yaml.safe_load(read_text(path, ConfigError))
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML; use another output folder") from None
    # keys added to the schema since the run began take their defaults (a saved recipe that
    # does not parse is compared as it is: the difference is reported below)
    with contextlib.suppress(ConfigError):
        saved = to_dict(from_dict(RecipeConfig, saved))
    now = to_dict(recipe)
    diffs = config_differences(saved, now)
    if diffs:
        key = diffs[0]
        old, new = _lookup(saved, key), _lookup(now, key)
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ConfigError(
            f"{out_dir} holds a run with another recipe: {key} is {old!r} there, {new!r} now"
            f"{more}; resume with the same recipe ({path}) or use another output folder"
        )
    return True


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return "<missing>"
        data = data[part]
    return data


def _latest_state(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint (a broken newest one is skipped with a warning)."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_checkpoint(path)
        except ValueError as exc:
            log.warning("skipping unreadable checkpoint: %s", exc)
            continue
        log.info("resuming from %s", path)
        return state
    return None


def _prepare_run(
    out_dir: Path, recipe: RecipeConfig, train_utts: list[Utterance], resume: bool
) -> dict[str, Any]:
    """Check or create the run folder; returns the tokenizer files, the state to resume, the
    recipe as the run records it (``pin_teacher``) and the teacher's model file (or None)."""
    recipe = pin_teacher(recipe)  # before the comparison: a changed teacher file is refused
    existing = _check_recipe(out_dir, recipe)
    if existing and not resume:
        raise ValueError(f"{out_dir} already holds a run; resume it or use another output folder")
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if not existing:
        found = [n for n in (MODEL_FILE, "metrics.csv") if (out_dir / n).exists()]
        if found or list_checkpoints(ckpt_dir):
            raise ValueError(
                f"{out_dir} holds training output ({', '.join(found) or CHECKPOINT_DIR}) but no "
                f"{RECIPE_FILE}: not touching it; use another output folder"
            )
    tok_dir = out_dir / TOKENIZER_DIR
    if existing and tok_dir.is_dir():
        tokenizer = load_tokenizer(tok_dir)
    elif recipe.train.init_from is not None:
        init = _init_bundle(recipe)
        tokenizer = tokenizer_from_files(init["tokenizer"])
        _check_init_fits(recipe, tokenizer, init["state_dict"])
    else:
        texts = [u.text for u in train_utts]
        tokenizer = build_tokenizer(recipe.tokenizer, recipe.model.vocab_size, texts)
    teacher = None
    if recipe.train.kd.teacher is not None:
        teacher = load_teacher_bundle(recipe.train.kd)
        check_teacher(teacher, recipe, tokenizer)
    if recipe.train.feature_kd.features is not None:
        _check_feature_kd(recipe, train_utts)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not existing:  # a tokenizer/ without recipe.yaml is left over from a start that failed
        tokenizer.save(tok_dir)
        with (out_dir / RECIPE_FILE).open("x", encoding="utf-8") as f:  # never overwrites
            yaml.safe_dump(to_dict(recipe), f, sort_keys=False)
    remove_temp_files(ckpt_dir)
    remove_temp_files(out_dir)
    state = _latest_state(ckpt_dir)
    return {"tokenizer": tokenizer_to_files(tokenizer), "state": state, "recipe": recipe,
            "teacher": teacher}  # fmt: skip


def _check_feature_kd(recipe: RecipeConfig, train_utts: list[Utterance]) -> None:
    """ConfigError (one line) before a run starts unless ``train.feature_kd`` fits it: a
    readable store, rows at the student's frame rate, a layer the encoder has (``open_store``),
    and features for at least one training utterance."""
    cfg = recipe.train.feature_kd
    targets = open_store(cfg, frame_ms(recipe.model), recipe.model.num_encoder_layers)
    if not any(u.id in targets.index for u in train_utts):
        raise ConfigError(
            f"train.feature_kd.features {cfg.features}: none of the {len(train_utts)} training "
            "utterances has features there (the store is keyed by utterance id)"
        )


def _init_bundle(recipe: RecipeConfig) -> dict[str, Any]:
    """The model file of ``train.init_from`` (a dict as ``ASR.bundle`` makes)."""
    return read_model_file(str(recipe.train.init_from), "train.init_from")


def init_model_section(model: str) -> dict[str, Any]:
    """The model section (architecture) of the model file or bundled model ``model``, for
    ``mamba-asr train --init``: the recipe's own model section gives way to it, so a model of
    other widths (a pruned one) is fine-tuned as it is. ConfigError (one line) if unreadable."""
    from mamba_asr.asr import upgrade_bundle

    data = read_model_file(model, "--init")
    try:
        section = upgrade_bundle(data)["model"]
    except (KeyError, TypeError, ValueError):
        section = None
    if not isinstance(section, dict):
        raise ConfigError(f"--init: {model}: no model section in the model file")
    return section


def read_model_file(model: str, what: str) -> dict[str, Any]:
    """The dict of a model file (or a bundled model's, by name); ConfigError naming ``what``
    (the option that named it) unless it is a mamba-asr model file."""
    from mamba_asr.pretrained import resolve_model

    try:
        path = resolve_model(model)  # a file or a bundled model's name
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and runtime errors all mean "not a model file"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"{what}: {path}: not a readable model file ({reason})") from None
    if not isinstance(data, dict) or "state_dict" not in data or "tokenizer" not in data:
        raise ConfigError(f"{what}: {path}: not a mamba-asr model file")
    return data


def _check_init_fits(recipe: RecipeConfig, tokenizer: Tokenizer, theirs: dict[str, Any]) -> None:
    """ConfigError unless the weights ``theirs`` (with their ``tokenizer``) fit the recipe's
    model name for name and shape for shape (loss weights, dropout and the like may differ)."""
    own = ASR.from_recipe(recipe, tokenizer, device="meta").state_dict()
    problems = [f"{k} is missing there" for k in own if k not in theirs]
    problems += [f"{k} is not in this model" for k in theirs if k not in own]
    problems += [
        f"{k} is {tuple(theirs[k].shape)} there, {tuple(own[k].shape)} here"
        for k in own
        if k in theirs and theirs[k].shape != own[k].shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"train.init_from: {recipe.train.init_from} does not fit this recipe's model: "
            f"{problems[0]}{more}"
        )


def _on_main(ctx: DistributedContext, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on rank 0, its result (or its error) on every rank."""
    if not ctx.distributed:
        return fn(*args)
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", fn(*args))
        except (ValueError, OSError, ImportError) as exc:
            error, outcome = exc, ("error", str(exc))
    outcome = broadcast_object(outcome, ctx)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise ValueError(f"rank 0: {outcome[1]}")
    return outcome[1]


# --- random number generators ----------------------------------------------------------------


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- data --------------------------------------------------------------------------------------


def _loader(
    dataset: AsrDataset, sampler: DynamicBatchSampler, workers: int, seed: int, device: Any
) -> DataLoader:
    """Batches of ``dataset``; worker seeds come from a generator of their own (seeded by
    ``seed``), so creating the loader draws nothing from the global torch generator."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def _eval_loader(
    utts: list[Utterance], tokenizer: Tokenizer, recipe: RecipeConfig, device: Any
) -> DataLoader | None:
    """Duration-sorted batches of ``utts``, no augmentation; None when there are none."""
    if not utts:
        return None
    data = AsrDataset(utts, tokenizer, recipe.data.sample_rate, speed_perturb=None, skip_bad=True)
    sampler = DynamicBatchSampler(
        data.durations, recipe.train.max_batch_seconds, num_buckets=1, shuffle=False
    )
    return _loader(data, sampler, recipe.train.num_workers, recipe.train.seed, device)


def _fit_cmvn(
    asr: ASR, utts: list[Utterance], recipe: RecipeConfig, device: Any, bad: _BadAudio
) -> None:
    """Fit the CMVN statistics on up to ``data.cmvn_max_utterances`` training utterances (a
    seeded random subset, without speed perturbation)."""
    rng = np.random.default_rng(recipe.train.seed)
    chosen = rng.permutation(len(utts))[: recipe.data.cmvn_max_utterances]
    loader = _eval_loader([utts[i] for i in sorted(chosen)], asr.tokenizer, recipe, device)
    assert loader is not None

    def feats() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in loader:
            bad.note(batch)
            if len(batch):
                with torch.no_grad():
                    b = batch.to(device)
                    yield asr.raw_features(b.waves, b.wave_lengths)

    t0 = time.perf_counter()
    asr.cmvn.fit(feats())
    log.info(
        "CMVN fitted on %d utterances (%d frames) in %.1f s",
        len(chosen), int(asr.cmvn.frames), time.perf_counter() - t0,
    )  # fmt: skip


# --- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Validation:
    loss: float
    wer: float
    cer: float
    utterances: int


def _validate(
    asr: ASR,
    loader: DataLoader | None,
    recipe: RecipeConfig,
    ctx: DistributedContext,
    bad: _BadAudio,
) -> _Validation:
    """Loss and greedy (or beam) WER/CER over every rank's share of the validation set."""
    options = DecodingOptions(strategy=recipe.train.valid_strategy)
    loss_sum, refs, hyps = 0.0, [], []
    was_training = asr.training
    asr.eval()
    with torch.no_grad():
        for batch in loader if loader is not None else []:
            bad.note(batch)
            if not len(batch):
                continue
            b = batch.to(ctx.device)
            with autocast(ctx.device, _precision(recipe)):
                feats, lengths = asr.features(b.waves, b.wave_lengths)
                loss = float(asr.model.loss(feats, lengths, b.targets, b.target_lengths).loss)
                results = decode_batch(asr.model, feats, lengths, options)
            loss_sum += loss * len(b)  # batchmean: sum over the batch / B
            refs.extend(b.texts)
            hyps.extend(asr.tokenizer.decode(r.tokens) for r in results)
    asr.train(was_training)
    parts = gather_objects((loss_sum, refs, hyps), ctx)
    total = sum(p[0] for p in parts)
    all_refs = [r for p in parts for r in p[1]]
    all_hyps = [h for p in parts for h in p[2]]
    rates = error_rates(all_refs, all_hyps)
    count = len(all_refs)
    return _Validation(total / max(count, 1), rates.wer, rates.cer, count)


def _stand_in(recipe: RecipeConfig) -> Batch:
    """One second of silence with a one-token target: what a DDP rank whose batch held only
    bad audio trains on with weight 0 (zero gradients, but it joins the all-reduce)."""
    rate, token = recipe.data.sample_rate, recipe.model.vocab_size - 1  # not a special id
    one = torch.ones(1, dtype=torch.long)
    return Batch(torch.zeros(1, rate), one * rate, (one * token).view(1, 1), one, ["stand-in"],
                 [""], [1.0])  # fmt: skip


@contextlib.contextmanager
def _frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics kept as they are (momentum 0) inside the block, and the
    activation ranges of quantization-aware training."""
    from mamba_asr.qat import observers_frozen

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        with observers_frozen(model):
            yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def _precision(recipe: RecipeConfig) -> str | None:
    return None if recipe.train.precision == "auto" else recipe.train.precision


# --- the run -------------------------------------------------------------------------------------


class _Run:
    """Everything one training run holds; methods are the steps of ``train``."""

    def __init__(
        self,
        recipe: RecipeConfig,
        ctx: DistributedContext,
        out_dir: Path,
        asr: ASR,
        model: nn.Module,
        sampler: DynamicBatchSampler,
        progress: _Progress,
        metrics: MetricsLog,
    ) -> None:
        self.recipe, self.ctx, self.out_dir = recipe, ctx, out_dir
        self.asr, self.model, self.sampler = asr, model, sampler
        self.optimizer = build_optimizer(asr, recipe.train)
        self.scheduler = build_scheduler(self.optimizer, recipe.train)
        self.p, self.metrics = progress, metrics
        self.ckpt_dir = out_dir / CHECKPOINT_DIR
        self.audio_seconds = 0.0  # this rank's, since the last training-loss row
        self.data_wait = 0.0  # seconds this rank waited for its next batch, likewise
        self.window_start = time.perf_counter()
        self.profiler = _StepProfiler.from_env(ctx)
        self.throughput: list[tuple[int, float]] = []
        self.deadline: float | None = None  # time.perf_counter() value to stop at
        self.bad = _BadAudio(strict=False)
        self.teacher: Teacher | None = None  # train.kd: the frozen teacher, not in DDP
        self.feature_teacher: FeatureTeacher | None = None  # train.feature_kd: stored features
        self.anchor: list[tuple[nn.Parameter, torch.Tensor]] = []  # train.decay_to_init: (p, start)
        self.heldout: tuple[DataLoader | None] | None = None  # (its loader,) with a held-out set

    def out_of_time(self) -> bool:
        """Past the deadline (the same answer on every rank: rank 0's clock decides)."""
        if self.deadline is None:
            return False
        late = torch.tensor([time.perf_counter() > self.deadline], dtype=torch.int32)
        if self.ctx.distributed:
            late = late.to(self.ctx.device)
            torch.distributed.broadcast(late, 0)
        return bool(late.item())

    def load(self, state: dict[str, Any]) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.ctx.world_size:
            raise ValueError(
                f"the newest checkpoint in {self.ckpt_dir} was saved by {len(ranks)} "
                f"process(es): resume with the same number (now {self.ctx.world_size})"
            )
        self.asr.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        s = state["progress"]
        self.p = _Progress(s["step"], s["epoch"], s["batches_done"], list(s["best"]))
        _set_rng_state(ranks[self.ctx.rank]["rng"])
        window = list(ranks[self.ctx.rank]["window"])
        self.p.window = window + [0.0] * (3 - len(window))  # older checkpoints: no KD sum
        log.info(
            "resumed at step %d, epoch %d, batch %d of %d",
            self.p.step, self.p.epoch + 1, self.p.batches_done, len(self.sampler),
        )  # fmt: skip

    def save(self, valid: _Validation | None, heldout: _Validation | None = None) -> None:
        """Checkpoint the current state (a collective call: every rank must make it); the
        validation of ``train.select_on`` ranks it among the best."""
        # per rank: its generators and its share of the loss window
        ranks = gather_objects({"rng": _rng_state(), "window": list(self.p.window)}, self.ctx)
        if self.ctx.is_main:
            name = checkpoint_name(self.p.step)
            chosen = heldout if self.recipe.train.select_on == "heldout" else valid
            if chosen is not None and math.isfinite(chosen.wer):
                entry = {"step": self.p.step, "wer": chosen.wer, "file": name}
                ranked = sorted([*self.p.best, entry], key=lambda e: (e["wer"], -e["step"]))
                self.p.best = ranked[: self.recipe.train.keep_best]
            state = {
                "model": self.asr.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(batches_done=self.p.batches_done),
                "progress": dataclasses.asdict(self.p),
                "ranks": ranks,
                "config": to_dict(self.recipe),
                "valid": None if valid is None else dataclasses.asdict(valid),
                "valid_heldout": None if heldout is None else dataclasses.asdict(heldout),
                "world_size": self.ctx.world_size,
            }
            save_checkpoint(self.ckpt_dir / name, state)
            self._prune(name)
        barrier(self.ctx)

    def _prune(self, newest: str) -> None:
        keep = {newest, *(e["file"] for e in self.p.best)}
        for path in list_checkpoints(self.ckpt_dir):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    # --- training ---------------------------------------------------------------------------

    def run_epoch(self, train_data: AsrDataset, max_steps: int | None, show: bool) -> bool:
        """Train to the end of the epoch (or to ``max_steps``); True if the epoch finished."""
        cfg = self.recipe.train
        self.sampler.set_epoch(self.p.epoch)
        train_data.set_epoch(self.p.epoch)
        total = len(self.sampler)
        loader = _loader(train_data, self.sampler, cfg.num_workers, cfg.seed + self.p.epoch,
                         self.ctx.device)  # fmt: skip
        self.model.train()
        bar = _progress_bar(total, self.p.batches_done, self.p.epoch, show)
        group_left = 0
        batches = iter(loader)
        try:
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                self.data_wait += time.perf_counter() - waited
                if batch is None:
                    break
                if group_left == 0:
                    group_left = min(cfg.grad_accum, total - self.p.batches_done)
                    group_size = group_left
                group_left -= 1
                self.bad.note(batch)
                losses = self._forward_backward(batch, group_size, sync=group_left == 0)
                self.p.batches_done += 1
                loss = None if losses is None else losses[0]
                if losses is not None:
                    self.p.window[0] += losses[0]
                    self.p.window[1] += 1
                    self.p.window[2] += losses[1]
                bar.update(1)
                if group_left:
                    continue
                lr = self._optimizer_step()
                self.profiler.step(self.p.step)
                bar.set_postfix(loss=f"{loss or 0.0:.3f}", lr=f"{lr:.2e}", step=self.p.step)
                self._log_train(lr)
                at_end = self.p.batches_done == total
                stop = (max_steps is not None and self.p.step >= max_steps) or self.out_of_time()
                every = cfg.checkpoint_every_steps
                if not at_end and (stop or (every and self.p.step % every == 0)):
                    self.save(valid=None)
                if stop and not at_end:
                    return False
        finally:
            bar.close()
        return True

    def _forward_backward(
        self, batch: Batch, group_size: int, sync: bool
    ) -> tuple[float, float] | None:
        """The batch's own loss and KD term (0 without a teacher) after its backward pass of
        loss + kd.weight * KD; None for a batch of only bad audio (under DDP that rank trains
        on a stand-in with weight 0, so that it joins the all-reduce)."""
        if not len(batch) and not self.ctx.distributed:
            return None
        weight = 1.0 if len(batch) else 0.0
        self.audio_seconds += float(batch.wave_lengths.sum()) / self.recipe.data.sample_rate
        b = (batch if weight else _stand_in(self.recipe)).to(self.ctx.device, non_blocking=True)
        no_sync = getattr(self.model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        frozen = _frozen_norm_statistics(self.asr) if not weight else contextlib.nullcontext()
        with context, frozen:
            with autocast(self.ctx.device, _precision(self.recipe)):
                out = self.model(b.waves, b.wave_lengths, b.targets, b.target_lengths)
                total, kd = out.loss, None
                if self.teacher is not None:  # no_grad inside; the student's outputs of out
                    kd = self.teacher.loss(out, b.waves, b.wave_lengths, b.targets,
                                           b.target_lengths)  # fmt: skip
                    total = total + self.recipe.train.kd.weight * kd
                if self.feature_teacher is not None:  # the hooked layer's output of this batch
                    fkd = self.feature_teacher.loss(out.lengths, b.ids)
                    if fkd is not None:
                        total = total + self.recipe.train.feature_kd.weight * fkd
                        kd = fkd if kd is None else kd + fkd
            (total * weight / group_size).backward()
        if not weight:
            return None
        return float(out.loss.detach()), 0.0 if kd is None else float(kd.detach())

    def _optimizer_step(self) -> float:
        """Clip, step, advance the schedule; returns the lr this step used."""
        cfg = self.recipe.train
        lr = self.scheduler.get_last_lr()[0]
        params = [p for p in self.asr.parameters() if p.grad is not None]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if torch.isfinite(norm):
            self.optimizer.step()
            if self.anchor:  # decoupled L2-SP: a step of lr * decay_to_init towards the start
                with torch.no_grad():
                    weight = min(1.0, lr * cfg.decay_to_init)
                    for param, start in self.anchor:
                        param.lerp_(start, weight)
        else:
            log.warning("step %d: gradient norm %s, update skipped", self.p.step + 1, norm)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.p.step += 1
        return lr

    def _log_train(self, lr: float) -> None:
        if self.p.step % self.recipe.train.log_every:
            return
        window = torch.tensor(
            [*self.p.window, self.audio_seconds, self.data_wait], dtype=torch.float64
        )
        if self.ctx.distributed:  # mean over every rank's batches, audio of every rank
            summed = [window.to(self.ctx.device)]
            torch.distributed.all_reduce(summed[0])
            window = summed[0].cpu()
        loss = float(window[0] / window[1].clamp_min(1))
        distilling = self.teacher is not None or self.feature_teacher is not None
        kd = float(window[2] / window[1].clamp_min(1)) if distilling else None
        self.metrics.add(self.p.step, self.p.epoch + 1, train_loss=loss, lr=lr, kd_loss=kd)
        now = time.perf_counter()
        elapsed = max(now - self.window_start, 1e-9)
        speed = float(window[3]) / elapsed
        waiting = float(window[4]) / self.ctx.world_size / elapsed  # mean over the ranks
        self.throughput.append((self.p.step, speed))
        kd_part = "" if kd is None else f", KD {kd:.4f}"
        log.info("step %d: loss %.4f%s, lr %.3g, %.0f s of audio per second, %.0f%% of the "
                 "time waiting for data", self.p.step, loss, kd_part, lr, speed,
                 100 * waiting)  # fmt: skip
        self.p.window = [0.0, 0.0, 0.0]
        self.audio_seconds, self.data_wait, self.window_start = 0.0, 0.0, now

    def end_epoch(self, valid_loader: DataLoader | None) -> _Validation:
        """Validate, checkpoint (as the start of the next epoch), log, plot."""
        valid = _validate(self.asr, valid_loader, self.recipe, self.ctx, self.bad)
        held = None
        if self.heldout is not None:
            held = _validate(self.asr, self.heldout[0], self.recipe, self.ctx, self.bad)
        self.window_start = time.perf_counter()  # validation is not training time
        epoch = self.p.epoch + 1
        log.info(
            "epoch %d, step %d: valid loss %.4f, WER %.2f %%, CER %.2f %% (%d utterances)",
            epoch, self.p.step, valid.loss, 100 * valid.wer, 100 * valid.cer, valid.utterances,
        )  # fmt: skip
        if held is not None:
            log.info("epoch %d, held-out set: WER %.2f %%, CER %.2f %% (%d utterances)",
                     epoch, 100 * held.wer, 100 * held.cer, held.utterances)  # fmt: skip
        self.metrics.add(self.p.step, epoch, valid_loss=valid.loss, wer=valid.wer, cer=valid.cer,
                         wer_heldout=None if held is None else held.wer,
                         cer_heldout=None if held is None else held.cer)  # fmt: skip
        self.p.epoch += 1
        self.p.batches_done = 0
        self.sampler.set_epoch(self.p.epoch)
        self.save(valid, held)
        self.metrics.plot()
        return valid

    def finish(self) -> Path | None:
        """Average the best checkpoints into ``model.pt`` (rank 0); returns its path."""
        path = self.out_dir / MODEL_FILE
        if self.ctx.is_main and not path.exists():
            best = self.p.best[: self.recipe.train.average]
            files = [self.ckpt_dir / e["file"] for e in best]
            files = [f for f in files if f.is_file()]
            if files:
                weights = average_checkpoints(files)
                names = ", ".join(f.name for f in files)
                log.info("model.pt: average of %d best checkpoint(s): %s", len(files), names)
            else:
                weights = None
                log.warning("no validated checkpoint to average: model.pt has the last weights")
            self.asr.save(path, state_dict=weights)
        barrier(self.ctx)
        return path if self.ctx.is_main else None


class _StepProfiler:
    """``MAMBA_ASR_PROFILE=DIR,FIRST,COUNT``: every rank records optimizer steps FIRST + 1 to
    FIRST + COUNT with ``torch.profiler`` (CPU, and CUDA on a GPU) and writes
    ``DIR/rank<r>.json`` (a Chrome trace) and ``DIR/rank<r>.txt`` (the ops by total time), to
    see where a step's time goes (kernels, all-reduce waits, data loading gaps). Unset: idle."""

    def __init__(self, folder: Path | None, first: int, count: int, rank: int, cuda: bool):
        self.folder, self.first, self.last, self.rank, self.cuda = (
            folder, first, first + count, rank, cuda,
        )  # fmt: skip
        self.prof: Any = None

    @classmethod
    def from_env(cls, ctx: DistributedContext) -> _StepProfiler:
        spec = os.environ.get(PROFILE_ENV)
        if not spec:
            return cls(None, 0, 0, ctx.rank, False)
        try:
            folder, first, count = spec.split(",")
            return cls(Path(folder), int(first), int(count), ctx.rank, ctx.device.type == "cuda")
        except ValueError:
            raise ValueError(f"{PROFILE_ENV} must be DIR,FIRST,COUNT, got {spec!r}") from None

    def step(self, step: int) -> None:
        """Call after optimizer step ``step``."""
        if self.folder is None:
            return
        if step == self.first and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.prof = profile(activities=activities)
            self.prof.__enter__()
        elif step == self.last and self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.prof.export_chrome_trace(str(self.folder / f"rank{self.rank}.json"))
            key = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
            table = self.prof.key_averages().table(sort_by=key, row_limit=40)
            atomic_write_text(self.folder / f"rank{self.rank}.txt", table + "\n")
            self.prof, self.folder = None, None


def _progress_bar(total: int, done: int, epoch: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, desc=f"epoch {epoch + 1}", unit="batch", disable=not show,
        dynamic_ncols=True, leave=False,
    )  # fmt: skip


# --- entry point ---------------------------------------------------------------------------------


def train(
    recipe: RecipeConfig,
    train_manifest: str | os.PathLike[str],
    valid_manifest: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str | torch.device | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool | None = None,
    max_seconds: float | None = None,
    strict: bool = False,
    heldout_manifest: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``recipe`` on the manifests into ``out_dir`` (see the module docstring).

    device: as for ``mamba_asr.device.get_device`` (under torchrun, CUDA means each rank's
    ``cuda:<LOCAL_RANK>``). resume: continue the run ``out_dir`` holds (False: refuse to
    touch a folder that holds a run). max_steps: stop after this many optimizer steps in
    total, with a checkpoint (running again continues); None: train all epochs. max_seconds:
    likewise, stop at the first optimizer step after this much wall-clock time. progress:
    show a progress bar (default: when stderr is a terminal; rank 0 only). strict: stop at
    the first audio file that does not load (ValueError naming it); by default such a file is
    left out of its batch (the same on every run, so a resume stays exact), reported once with
    one WARNING line and counted in ``TrainResult.skipped_audio``. heldout_manifest: a second
    validation set, decoded at every epoch end beside ``valid_manifest`` (``wer_heldout``,
    ``cer_heldout`` in metrics.csv), e.g. voices or speakers left out of training; with
    ``train.select_on: heldout`` its WER chooses the checkpoints kept and averaged.

    Raises ``ValueError`` (``ConfigError``, ``ManifestError``, ...) or ``OSError`` with one
    line for bad inputs: a missing manifest, a recipe that differs from the run's, ...
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    out_dir = Path(out_dir)
    train_utts, valid_utts = read_manifest(train_manifest), read_manifest(valid_manifest)
    if not train_utts:
        raise ManifestError(f"{train_manifest}: no utterances, nothing to train on")
    heldout_utts = None
    if heldout_manifest is not None:
        heldout_utts = read_manifest(heldout_manifest)
        if not heldout_utts:
            raise ManifestError(f"{heldout_manifest}: no utterances in the held-out set")
    elif recipe.train.select_on == "heldout":
        raise ConfigError("train.select_on heldout needs a held-out validation set "
                          "(--valid-heldout MANIFEST)")  # fmt: skip
    ctx = init_distributed(device)
    locks: list[FolderLock] = []  # rank 0's, held until the end
    try:
        prepared = _on_main(ctx, _lock_and_prepare, locks, out_dir, recipe, train_utts, resume)
        tokenizer = tokenizer_from_files(prepared["tokenizer"])
        recipe = prepared["recipe"]  # the teacher's path and hash recorded (train.kd)
        with _file_log(out_dir / "train.log", ctx.is_main):
            result = _train(recipe, ctx, out_dir, tokenizer, train_utts, valid_utts,
                            prepared["state"], max_steps, progress, deadline,
                            _BadAudio(strict), prepared["teacher"], heldout_utts)  # fmt: skip
        # every rank waits for rank 0's model.pt and leaves the process group together: a
        # rank that tore down gloo while another still used it was seen to abort at exit
        barrier(ctx)
        return result
    finally:
        for lock in locks:
            lock.release()
        cleanup(ctx)


def _lock_and_prepare(locks: list[FolderLock], out_dir: Path, *args: Any) -> dict[str, Any]:
    """Lock ``out_dir`` (appended to ``locks``), then ``_prepare_run``."""
    locks.append(lock_folder(out_dir, LOCK_FILE))
    return _prepare_run(out_dir, *args)


@contextlib.contextmanager
def _file_log(path: Path, enabled: bool) -> Iterator[None]:
    """Copy the package's INFO (and higher) log lines to ``path`` while training."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("mamba_asr")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _train(
    recipe: RecipeConfig,
    ctx: DistributedContext,
    out_dir: Path,
    tokenizer: Tokenizer,
    train_utts: list[Utterance],
    valid_utts: list[Utterance],
    state: dict[str, Any] | None,
    max_steps: int | None,
    progress: bool | None,
    deadline: float | None,
    bad: _BadAudio,
    teacher_bundle: dict[str, Any] | None = None,
    heldout_utts: list[Utterance] | None = None,
) -> TrainResult:
    cfg = recipe.train
    _seed_all(cfg.seed)
    train_data = AsrDataset(train_utts, tokenizer, recipe.data.sample_rate,
                            recipe.data.speed_perturb, cfg.seed, skip_bad=True,
                            wave_augment=recipe.data.wave_augment)  # fmt: skip
    sampler = DynamicBatchSampler(
        train_data.durations, cfg.max_batch_seconds, cfg.num_buckets, shuffle=True,
        seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
        group_size=ctx.world_size * cfg.grad_accum,
    )  # fmt: skip
    valid_loader = _eval_loader(valid_utts[ctx.rank :: ctx.world_size], tokenizer, recipe,
                                ctx.device)  # fmt: skip
    heldout_loader = None
    if heldout_utts is not None:
        heldout_loader = _eval_loader(heldout_utts[ctx.rank :: ctx.world_size], tokenizer,
                                      recipe, ctx.device)  # fmt: skip
    asr = ASR.from_recipe(recipe, tokenizer, device=ctx.device)
    # train.decay_to_init: every rank, resumed or not, holds the starting weights as its anchor
    if (state is None and ctx.is_main) or cfg.decay_to_init > 0:
        if cfg.init_from is not None:  # weights and CMVN statistics (DDP copies rank 0's)
            asr.load_state_dict(_init_bundle(recipe)["state_dict"])
            log.info("initialised from %s", cfg.init_from)
        else:
            _fit_cmvn(asr, train_utts, recipe, ctx.device, bad)
    if cfg.qat is not None:  # fake quantizers on the float weights (a checkpoint holds both)
        from mamba_asr.qat import prepare_qat

        prepare_qat(asr, cfg.qat, cfg.qat_block)
        log.info("quantization-aware training: %s", cfg.qat)
    metrics = MetricsLog(out_dir, 0 if state is None else state["progress"]["step"], ctx.is_main)
    run = _Run(recipe, ctx, out_dir, asr, asr, sampler, _Progress(), metrics)
    if cfg.decay_to_init > 0:  # before a resumed state replaces the weights
        run.anchor = [(p, p.detach().clone()) for p in asr.parameters() if p.requires_grad]
        log.info("decay to the starting weights: %g x lr per step", cfg.decay_to_init)
    run.deadline, run.bad = deadline, bad
    run.heldout = (heldout_loader,) if heldout_utts is not None else None
    if teacher_bundle is not None:  # every rank its own copy, outside DDP
        run.teacher = Teacher(teacher_bundle, cfg.kd, ctx.device)
        kd = cfg.kd
        log.info("distilling from %s (SHA-256 %s...): target %s, weight %g, temperature %g",
                 kd.teacher, (kd.teacher_sha256 or "")[:12], kd.target, kd.weight,
                 kd.temperature)  # fmt: skip
    if cfg.feature_kd.features is not None:  # a hook on the layer, before DDP wraps the model
        fkd = cfg.feature_kd
        stored = open_store(fkd, frame_ms(recipe.model), recipe.model.num_encoder_layers)
        run.feature_teacher = FeatureTeacher(fkd, stored, asr.model)
        log.info("feature distillation from %s (%s): %d of %d training utterances have "
                 "features; layer %d, weight %g, delay %d%s", fkd.features, stored.teacher,
                 sum(u.id in stored.index for u in train_utts), len(train_utts),
                 run.feature_teacher.layer, fkd.weight, fkd.delay,
                 ", cross-fitted" if fkd.cross_fit else "")  # fmt: skip
    if state is not None:
        run.load(state)
    else:
        _seed_all(cfg.seed + ctx.rank)
    run.model = wrap_model(asr, ctx)  # DDP broadcasts rank 0's weights and CMVN statistics
    show = (sys.stderr.isatty() if progress is None else progress) and ctx.is_main
    stopped = False
    try:
        while run.p.epoch < cfg.epochs and not stopped:
            if max_steps is not None and run.p.step >= max_steps:
                break
            finished = run.run_epoch(train_data, max_steps, show)
            if finished:
                run.end_epoch(valid_loader)
            stopped = not finished or (max_steps is not None and run.p.step >= max_steps)
            stopped = stopped or run.out_of_time()
        done = run.p.epoch >= cfg.epochs
        model_path = run.finish() if done else None
    finally:
        metrics.close()
        if run.feature_teacher is not None:  # the hook off the layer
            run.feature_teacher.close()
    best = run.p.best[0]["wer"] if run.p.best else None
    skipped = set().union(*gather_objects(bad.seen, ctx))  # every rank's
    return TrainResult(out_dir, run.p.step, run.p.epoch, done, model_path, best, ctx.rank,
                       tuple(run.throughput), len(skipped))  # fmt: skip
