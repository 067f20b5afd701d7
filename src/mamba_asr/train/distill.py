"""Knowledge distillation: a trained teacher's distributions as extra targets for the student.

Shape key
    B: batch, T: encoder frames, V: vocabulary (blank included), R: lattice rows per frame
    (the pruned band's width, or S + 1 for the full lattice), S: target tokens.

With ``train.kd.teacher`` set (``mamba-asr train ... --teacher MODEL``) the trainer's loss is

    student's own loss + weight * KD,  KD = T^2 * sum_frames KL(q_T || p_T) / B

where q_T = softmax(teacher / T) and p_T = softmax(student / T) at the temperature T (the T^2
keeps the gradients' size independent of T, Hinton et al. 2015), summed over the valid frames of
each utterance (padded frames contribute nothing) and divided by B, the number of utterances,
as the models' own losses are (``batchmean``). The distributions compared (``train.kd.target``):

- ``ctc``: the CTC posteriors of every encoder frame: the student's CTC head (a transducer's
  auxiliary ``ctc_lin``, so ``model.transducer.aux_ctc_weight > 0``) against the teacher's (a
  CTC model's output, a seq2seq model's CTC head, or a transducer's auxiliary head).
- ``lattice``: the joiner's distributions on the student's RNN-T lattice (both transducers):
  with ``model.transducer.loss: pruned`` the band the pruned loss picked (the teacher's joiner
  runs on the same band), else the full (T, S + 1) lattice. A frame's KL is the mean over its
  valid lattice rows (those at token positions <= S_b), so that KD stays one number per frame
  like the ``ctc`` target.

The teacher (``Teacher``) is a model file loaded on every rank on the training device, in eval
mode with ``requires_grad`` off, outside DDP, and run under ``torch.no_grad``; it computes its
own features from the student's batch of waveforms with its own filterbank and CMVN statistics
(the same filterbank as the student's: ``check_teacher`` requires the same sample rate), without
the student's training-time augmentation (VTLP, SpecAugment). Teacher and student must have
the same frame rate (subsampling) and the same tokenizer; ``check_teacher`` says which differs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamba_asr.asr import ASR, BUNDLE_FORMAT, tokenizer_from_files, upgrade_bundle
from mamba_asr.config import (
    ConfigError,
    FeatureConfig,
    KDConfig,
    ModelConfig,
    RecipeConfig,
    from_dict,
    replace_kd,
)
from mamba_asr.models.losses import LossOutput, reduce_loss
from mamba_asr.modules.masks import length_mask

__all__ = [
    "FBANK_HOP_MS",
    "Teacher",
    "check_teacher",
    "frame_ms",
    "kd_kl",
    "lattice_kd",
    "load_teacher_bundle",
    "pin_teacher",
    "sha256_file",
]

FBANK_HOP_MS = 10  # mamba_asr.audio.Fbank: 25 ms windows every 10 ms


# --- the losses --------------------------------------------------------------------------------


def _kl(student: Tensor, teacher: Tensor, temperature: float, valid: Tensor) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) over the last axis, in float32, 0 where
    ``valid`` (the other axes' shape) is False.

    Inputs are logits or log-probabilities (the same: a constant per row cancels). Invalid rows
    are replaced by zeros before anything is computed, so whatever they hold (even inf or NaN)
    reaches neither the value nor the gradient."""
    keep = valid[..., None]
    s = torch.log_softmax(torch.where(keep, student.float(), 0.0) / temperature, dim=-1)
    t = torch.log_softmax(torch.where(keep, teacher.float(), 0.0) / temperature, dim=-1)
    return torch.where(valid, (t.exp() * (t - s)).sum(-1), 0.0)


def kd_kl(
    student: Tensor,
    teacher: Tensor,
    lengths: Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Tensor:
    """Frame-level KD: T^2 * sum over the valid frames of KL(q_T || p_T), reduced.

    student, teacher: (B, T, V) logits or log-probabilities (the teacher's carry no gradient
    here: pass them detached); lengths: (B,) valid frames. reduction as in
    ``mamba_asr.models.losses`` (``batchmean``: the sum over the batch / B; ``mean``: each
    utterance's sum / its frames, averaged; ``none``: (B,)). Frames at or past an utterance's
    length contribute nothing, to the value or to the gradient.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher outputs differ in shape: {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    valid = length_mask(lengths, student.shape[1], student.device)  # (B, T)
    kl = _kl(student, teacher, temperature, valid)  # (B, T)
    per_utterance = kl.sum(-1) * temperature**2
    return reduce_loss(per_utterance, lengths, reduction)


def lattice_kd(
    student: Tensor,
    teacher: Tensor,
    frame_lengths: Tensor,
    target_lengths: Tensor,
    ranges: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Tensor:
    """Lattice KD: T^2 * sum over the valid frames of the mean KL(q_T || p_T) over the frame's
    valid lattice rows, reduced as ``kd_kl``.

    student, teacher: (B, T, R, V) joiner logits; frame_lengths, target_lengths: (B,);
    ranges: (B, T, R) token position of each row (a pruned band), None: row r is position r
    (the full lattice, R = S + 1). A row is valid at a position <= the utterance's
    target length, on a frame before its frame length.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher lattices differ in shape: {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    batch, frames, rows, _ = student.shape
    device = student.device
    if ranges is None:
        ranges = torch.arange(rows, device=device).expand(batch, frames, rows)
    frame_ok = length_mask(frame_lengths, frames, device)  # (B, T)
    row_ok = ranges <= target_lengths.to(device)[:, None, None]  # (B, T, R)
    valid = row_ok & frame_ok[:, :, None]
    kl = _kl(student, teacher, temperature, valid)  # (B, T, R)
    per_frame = kl.sum(-1) / valid.sum(-1).clamp_min(1)  # (B, T)
    per_utterance = per_frame.sum(-1) * temperature**2
    return reduce_loss(per_utterance, frame_lengths, reduction)


# --- the teacher's file ------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _teacher_path(name: str) -> Path:
    from mamba_asr.pretrained import resolve_model

    try:
        return resolve_model(name)
    except ValueError as exc:
        raise ConfigError(f"train.kd.teacher: {exc}") from None


def pin_teacher(recipe: RecipeConfig) -> RecipeConfig:
    """``recipe`` with its teacher recorded as the run keeps it: a file as an absolute path (a
    bundled model's name stays a name) and ``teacher_sha256`` the file's SHA-256. A recipe
    that pins another hash is refused (the file changed, or it is another file). Without a
    teacher the recipe is returned as it is."""
    kd = recipe.train.kd
    if kd.teacher is None:
        return recipe
    path = _teacher_path(kd.teacher)
    from mamba_asr.pretrained import MODELS

    name = kd.teacher if kd.teacher in MODELS else str(path.resolve())
    digest = sha256_file(path)
    if kd.teacher_sha256 is not None and kd.teacher_sha256 != digest:
        raise ConfigError(
            f"train.kd.teacher: {path} has SHA-256 {digest[:12]}..., but the run was started "
            f"with a teacher of SHA-256 {kd.teacher_sha256[:12]}... (train.kd.teacher_sha256): "
            "the teacher file changed; a resume needs the same teacher"
        )
    return replace_kd(recipe, teacher=name, teacher_sha256=digest)


def load_teacher_bundle(kd: KDConfig) -> dict[str, Any]:
    """The teacher's model file as a dict (``ASR.bundle``'s), loaded on the CPU."""
    assert kd.teacher is not None
    path = _teacher_path(kd.teacher)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and runtime errors all mean "not a model file"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(
            f"train.kd.teacher: {path}: not a readable model file ({reason})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        hint = ""
        if isinstance(data, dict) and data.get("format") == "mamba-asr-checkpoint":
            hint = " (a training checkpoint: give the run's model.pt)"
        raise ConfigError(f"train.kd.teacher: {path}: not a mamba-asr model file{hint}")
    try:
        return upgrade_bundle(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"train.kd.teacher: {path}: broken model file ({exc})") from None


# --- checks ------------------------------------------------------------------------------------


def frame_ms(model: ModelConfig) -> int:
    """Milliseconds per encoder frame: the filterbank's hop times the front end's subsampling."""
    f = model.frontend
    factor = f.subsampling if f.kind == "causal" else f.stride ** len(f.channels)
    return FBANK_HOP_MS * factor


def _pieces(tokenizer: Any) -> list[str]:
    """Every id's piece: what two tokenizers must agree on to share output layers."""
    if hasattr(tokenizer, "id_to_piece"):
        return [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    pieces = ["<blank>", "<s>", "</s>", *tokenizer.alphabet]
    return pieces + (["<unk>"] if tokenizer.unk else [])


def _has_ctc_head(model: ModelConfig) -> bool:
    return model.kind != "transducer" or model.transducer.aux_ctc_weight > 0


def check_teacher(bundle: dict[str, Any], recipe: RecipeConfig, tokenizer: Any) -> None:
    """ConfigError (one line, naming both sides) unless the teacher of ``bundle`` can teach
    the student of ``recipe`` with ``tokenizer``: same vocabulary and tokenizer pieces, same
    sample rate, same frame rate, and the outputs ``train.kd.target`` compares on both."""
    kd, student = recipe.train.kd, recipe.model
    where = f"train.kd.teacher {kd.teacher}"
    try:
        teacher = from_dict(ModelConfig, bundle["model"], "model")
        features = from_dict(FeatureConfig, bundle["features"], "features")
        teacher_tok = tokenizer_from_files(bundle["tokenizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: broken model file ({exc})") from None
    if teacher.vocab_size != student.vocab_size:
        raise ConfigError(
            f"{where}: the teacher's vocabulary has {teacher.vocab_size} ids, the student's "
            f"{student.vocab_size}: distillation needs the same tokenizer"
        )
    ours, theirs = _pieces(tokenizer), _pieces(teacher_tok)
    if ours != theirs:
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        raise ConfigError(
            f"{where}: the teacher's tokenizer differs from the student's (id {i} is "
            f"{theirs[i]!r} there, {ours[i]!r} here): distillation needs the same tokenizer "
            "(e.g. tokenizer.path=TEACHER_RUN/tokenizer)"
        )
    if teacher.blank_index != student.blank_index:
        raise ConfigError(
            f"{where}: the teacher's blank id is {teacher.blank_index}, the student's "
            f"{student.blank_index}"
        )
    if features.sample_rate != recipe.data.sample_rate:
        raise ConfigError(
            f"{where}: the teacher hears {features.sample_rate} Hz audio, the student "
            f"{recipe.data.sample_rate} Hz (data.sample_rate): they must be equal"
        )
    t_ms, s_ms = frame_ms(teacher), frame_ms(student)
    if t_ms != s_ms:
        raise ConfigError(
            f"{where}: the teacher's frame rate is {1000 / t_ms:g} frames/s "
            f"({t_ms // FBANK_HOP_MS}x subsampling), the student's {1000 / s_ms:g} frames/s "
            f"({s_ms // FBANK_HOP_MS}x): frame-level distillation needs the same subsampling"
        )
    if kd.target == "ctc":
        for who, cfg in (("student", student), ("teacher", teacher)):
            if not _has_ctc_head(cfg):
                raise ConfigError(
                    f"train.kd.target 'ctc' needs a CTC head on the {who}, a transducer "
                    f"without one (model.transducer.aux_ctc_weight is 0"
                    + (", set it > 0)" if who == "student" else f" in {kd.teacher})")
                )
    else:
        for who, cfg in (("student", student), ("teacher", teacher)):
            if cfg.kind != "transducer":
                raise ConfigError(
                    f"train.kd.target 'lattice' needs transducers, but the {who} is a "
                    f"{cfg.kind} model (use train.kd.target ctc)"
                )


# --- the teacher at training time --------------------------------------------------------------


class Teacher:
    """The frozen teacher of a run: ``ASR`` of the bundle on ``device``, eval mode, no
    gradients, not a submodule of the student (so neither its checkpoints nor DDP see it)."""

    def __init__(self, bundle: dict[str, Any], kd: KDConfig, device: torch.device | str) -> None:
        self.kd = kd
        self.asr = ASR.from_bundle(bundle, device=device, source=f"train.kd.teacher {kd.teacher}")
        self.asr.eval().requires_grad_(False)

    def _encode(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Any, Tensor]:
        feats, lengths = self.asr.features(waves, wave_lengths)  # own fbank and CMVN
        model = self.asr.model
        if self.asr.config.model.kind == "ctc":
            out = model(feats, lengths)
            return out.log_probs, out.lengths
        enc = model.encode(feats, lengths)
        return enc.memory, enc.lengths

    @torch.no_grad()
    def ctc_log_probs(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's CTC log-probabilities (B, T, V) and frames (B,) of a batch."""
        memory, lengths = self._encode(waves, wave_lengths)
        if self.asr.config.model.kind == "ctc":
            return memory, lengths
        return self.asr.model.ctc_log_probs(memory), lengths

    @torch.no_grad()
    def lattice_logits(
        self, waves: Tensor, wave_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
        ranges: Tensor | None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The teacher's joiner logits on the student's lattice (``ranges`` as in
        ``TransducerModel.lattice_logits``) and its frames (B,)."""
        memory, lengths = self._encode(waves, wave_lengths)
        return self.asr.model.lattice_logits(memory, targets, target_lengths, ranges), lengths

    def loss(self, out: LossOutput, waves: Tensor, wave_lengths: Tensor, targets: Tensor,
             target_lengths: Tensor) -> Tensor:  # fmt: skip
        """The KD term of one batch, from the student's ``LossOutput`` of it (unweighted,
        ``batchmean``)."""
        kd = self.kd
        if kd.target == "ctc":
            if out.log_probs is None:
                raise ValueError("train.kd.target 'ctc': the student gave no CTC posteriors")
            teacher, lengths = self.ctc_log_probs(waves, wave_lengths)
            _check_frames(out.lengths, lengths)
            return kd_kl(out.log_probs, teacher, out.lengths, kd.temperature)
        if out.lattice is None:
            raise ValueError("train.kd.target 'lattice': the student gave no lattice")
        teacher, lengths = self.lattice_logits(
            waves, wave_lengths, targets, target_lengths, out.lattice_ranges
        )
        _check_frames(out.lengths, lengths)
        return lattice_kd(out.lattice, teacher, out.lengths, target_lengths.to(teacher.device),
                          out.lattice_ranges, kd.temperature)  # fmt: skip


def _check_frames(student: Tensor | None, teacher: Tensor) -> None:
    """ValueError unless both models gave every utterance the same number of frames."""
    if student is None or not torch.equal(student.to(teacher.device), teacher):
        raise ValueError(
            f"knowledge distillation: the teacher gives {teacher.tolist()} frames, the student "
            f"{None if student is None else student.tolist()}: their front ends differ"
        )
