"""Structured pruning of the Mamba-CNN transducer (MCT): whole channels out, a smaller dense model.

``mamba-asr prune MODEL --ratio R --out M2`` (``prune_model_file``) removes the fraction R of the
channels of every pruned group and writes a model file of real, smaller tensors, with a config
that names the new widths, so ``load_model``, ``transcribe`` (offline and streaming) and
``export onnx`` take it like any other model. Nothing is masked at inference.

Groups (``GROUPS``; a group is one set of channels that share an index), each pruned at the
same ratio:

``mamba``
    each encoder layer's Mamba inner channels (d_inner): for channel c, rows c and d_inner + c of
    ``in_proj`` (x and z), ``conv1d`` channel c, column c of ``x_proj``, row c of ``dt_proj``
    (weight and bias), rows c of ``A_log`` and ``D``, column c of ``out_proj``. The config's
    ``model.mamba.d_inner`` is one number, so every layer keeps the same count; which channels,
    each layer chooses by its own scores.
``ffn``
    each encoder layer's feed-forward units (``model.d_ffn``, equal counts likewise): row c (and
    bias) of the first Linear, column c of the second.
``frontend``
    each stage of the causal CNN front end (``model.frontend.channels``, one width per stage):
    the stage's pointwise output channel c and its LayerNorm's c, the next stage's depthwise
    channel c and pointwise input c (after the last stage: column c of ``proj``). These
    channels feed a LayerNorm over the channels, so removing one changes the mean and variance
    the others are normalised with: the only group whose removal of a channel is not the same
    as zeroing it.
``predictor``
    the stateless predictor's units (``model.transducer.predictor_dim``): embedding column c,
    depthwise conv channel c, the joiner's ``pred_proj`` column c (and ``simple_lm_proj``'s
    with the pruned RNN-T loss). Not for the LSTM predictor: with ``lstm`` the group is left out.
``joiner``
    the joiner's hidden units (``model.transducer.joiner_dim``): rows c of ``enc_proj`` and
    ``pred_proj`` (weights and biases), column c of ``out``.

d_model (the residual stream, normalised by every layer's LayerNorms) is not pruned.

Criterion (``channel_scores``); the lowest scores go.

- Weights only (the default; no data, deterministic): the L2 norm of all the weights removing
  the channel takes out, every tensor slice listed above together (for a Mamba channel: its x
  and z rows of in_proj, its conv kernel and bias, its x_proj column, dt_proj row and bias,
  A_log row, D and out_proj column). Simple and data-free; on the bundled model at 0.25 it gave
  a lower dev WER than the product of the per-tensor norms along the channel's path (a path
  norm, invariant to rescaling between a channel's input and output side), though not at 0.5,
  where neither is usable without fine-tuning (docs/compression.md).
- Calibrated (``stats`` from ``activation_stats`` / ``calibration_stats``, a few utterances):
  a channel's contribution to the next layer, the L2 norm of its weights out of the channel
  times the scale of its activation, measured: the activation's standard deviation where its
  mean is folded into the next bias on removal (ffn, frontend, predictor, joiner:
  ``W[:, removed] @ mean[removed]`` is added to that bias, so a constant channel costs
  nothing) and its RMS where no bias follows (mamba: out_proj has none).

The joiner is not pruned unless asked for (``default_groups``): its tanh units run far from
zero, and removing them costs far more accuracy than their share of the parameters.

Counts: a group of n channels loses round(R * n) of them (at least one stays). Iterative
pruning (``steps`` K > 1) reaches R in K rounds, round k keeping n - round(R * n * k / K) of
the original n, and fine-tunes after each round with the trainer (``mamba-asr train --init``,
``FineTune``); without fine-tuning the rounds would remove the very channels of one round.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamba_asr.asr import ASR
from mamba_asr.config import ModelConfig

__all__ = [
    "GROUPS",
    "FineTune",
    "PruneReport",
    "ChannelStats",
    "activation_stats",
    "calibration_stats",
    "channel_scores",
    "check_prunable",
    "choose_channels",
    "default_groups",
    "group_widths",
    "mask_channels",
    "parameter_count",
    "prune_asr",
    "prune_model_file",
    "pruned_config",
    "target_counts",
]

log = logging.getLogger(__name__)

GROUPS = ("mamba", "ffn", "frontend", "predictor", "joiner")

Keep = dict[str, Tensor]  # group key -> kept channel indices (sorted, int64)
Slices = dict[str, list[tuple[int, Tensor]]]  # state-dict key -> (dim, kept indices) to apply


def check_prunable(config: ModelConfig, source: str = "the model") -> None:
    """ValueError (one line) unless ``config`` is a Mamba-CNN transducer (kind transducer,
    encoder_module mamba, frontend.kind causal): the only model ``prune`` knows the layout of."""
    if (config.kind, config.encoder_module, config.frontend.kind) != (
        "transducer",
        "mamba",
        "causal",
    ):
        raise ValueError(
            f"{source}: structured pruning supports the Mamba-CNN transducer (model.kind "
            f"'transducer', encoder_module 'mamba', frontend.kind 'causal'); this model is kind "
            f"{config.kind!r} with encoder_module {config.encoder_module!r} and frontend.kind "
            f"{config.frontend.kind!r}"
        )


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1): the fraction of channels removed, got {ratio}")


DEFAULT_GROUPS = ("mamba", "ffn", "frontend", "predictor")


def default_groups(calibrated: bool = False) -> tuple[str, ...]:
    """The groups pruned unless told: all but the joiner, with or without calibration. The
    joiner's tanh units run far from zero: removing 10% of the bundled model's by weights alone
    took its dev WER from 8% to over 400% (the blank logit fell by 9 on average); calibrated,
    with their means folded into the output bias, 25% of them still took the 25%-pruned model
    from 24% to 70%, for 2.7% of the parameters removed (docs/compression.md). ``--groups
    all`` (best with ``--calib``) prunes it too."""
    return DEFAULT_GROUPS


def _resolve_groups(config: ModelConfig, groups: Iterable[str] | None) -> tuple[str, ...]:
    """The groups to prune: ``groups`` checked, or every group the model has; the ffn group
    needs FFNs (d_ffn > 0) and the predictor group a stateless predictor."""
    wanted = GROUPS if groups is None else tuple(groups)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown or not wanted:
        raise ValueError(
            f"unknown pruning group {', '.join(unknown) or '(none given)'}; groups: "
            f"{', '.join(GROUPS)}"
        )
    out = []
    for g in GROUPS:
        if g not in wanted:
            continue
        if g == "predictor" and config.transducer.predictor != "stateless":
            log.info("an LSTM predictor is not pruned (the predictor group is stateless only)")
            continue
        out.append(g)
    return tuple(out)


def group_widths(asr: ASR, groups: Iterable[str] | None = None) -> dict[str, int]:
    """Channels of every group of ``groups`` (default: all the model has), by group key:
    ``encoder.layers.I.mamba``, ``encoder.layers.I.ffn``, ``frontend.stages.I``, ``predictor``,
    ``joiner``."""
    cfg = asr.config.model
    check_prunable(cfg)
    model = asr.model
    widths: dict[str, int] = {}
    for g in _resolve_groups(cfg, groups):
        if g == "mamba":
            for i, layer in enumerate(model.encoder.layers):
                widths[f"encoder.layers.{i}.mamba"] = layer.mamba.d_inner
        elif g == "ffn":
            for i, layer in enumerate(model.encoder.layers):
                if layer.ffn is not None:
                    widths[f"encoder.layers.{i}.ffn"] = layer.ffn.net[0].out_features
        elif g == "frontend":
            for i, stage in enumerate(model.frontend.stages):
                widths[f"frontend.stages.{i}"] = stage.pointwise.out_channels
        elif g == "predictor":
            widths["predictor"] = model.predictor.dim
        else:
            widths["joiner"] = model.joiner.out.in_features
    return widths


def target_counts(widths: dict[str, int], ratio: float) -> dict[str, int]:
    """Channels kept of each group at ``ratio``: n - round(ratio * n), at least 1."""
    return {k: max(1, n - math.floor(ratio * n + 0.5)) for k, n in widths.items()}


# --- scores --------------------------------------------------------------------------------------


def _rows(w: Tensor) -> Tensor:
    """L2 norm of each row (dim 0) of a weight, over all its other dims; float32."""
    return w.detach().float().flatten(1).norm(dim=1)


def _cols(w: Tensor) -> Tensor:
    """L2 norm of each column (dim 1) of a 2-D (or conv (out, in, 1)) weight; float32."""
    return w.detach().float().flatten(2).norm(dim=(0, 2)) if w.dim() > 2 else _rows(w.t())


@torch.no_grad()
def channel_scores(
    asr: ASR, groups: Iterable[str] | None = None, stats: Stats | None = None
) -> dict[str, Tensor]:
    """Each channel's importance, by group key (see ``group_widths``). Without ``stats``: the
    L2 norm of all the weights that removing the channel takes out (every slice ``prune_asr``
    cuts for it, together). With ``stats`` (``activation_stats``): its contribution to the next
    layer, the norm of its weights out of the channel times its activation's standard
    deviation where its mean is folded into a following bias on removal (ffn, frontend,
    predictor, joiner), its RMS where nothing can take the mean (mamba: out_proj has no bias).
    Float32, one score per channel; higher means more important."""
    if stats is not None:
        return _measured_scores(asr, groups, stats)
    state = asr.state_dict()
    scores: dict[str, Tensor] = {}
    for key, n in group_widths(asr, groups).items():
        total = torch.zeros(n)
        for name, cuts in _slices(asr, {key: torch.arange(n)}).items():
            for dim, idx in cuts:
                t = state[name].detach().float().square().movedim(dim, 0)
                t = t.reshape(t.shape[0], -1).sum(1)
                if len(idx) == 2 * n:  # in_proj: the x row and the z row of each channel
                    t = t.view(2, n).sum(0)
                total += t.cpu()
        scores[key] = total.sqrt()
    return scores


def _measured_scores(asr: ASR, groups: Iterable[str] | None, stats: Stats) -> dict[str, Tensor]:
    """``channel_scores`` with measured activations: ||weights out of c|| * (std or RMS of c)."""
    model = asr.model
    scores: dict[str, Tensor] = {}
    for key in group_widths(asr, groups):
        if key not in stats:
            raise ValueError(f"no activation statistics for {key}")
        st = stats[key]
        part = model.get_submodule(key)
        if key.endswith(".mamba"):
            scores[key] = _cols(part.out_proj.weight) * st.rms
        elif key.endswith(".ffn"):
            scores[key] = _cols(part.net[3].weight) * st.std
        elif key.startswith("frontend.stages."):
            i = int(key.rsplit(".", 1)[1])
            stages = model.frontend.stages
            if i + 1 < len(stages):
                nxt = stages[i + 1]
                out = _rows(nxt.depthwise.weight) * _cols(nxt.pointwise.weight)
            else:
                out = _cols(model.frontend.proj.weight)
            scores[key] = out * st.std
        elif key == "predictor":
            scores[key] = _cols(model.joiner.pred_proj.weight) * st.std
        else:
            scores[key] = _cols(part.out.weight) * st.std
    return scores


def choose_channels(scores: dict[str, Tensor], counts: dict[str, int]) -> Keep:
    """The ``counts[key]`` highest-scoring channels of each group, as sorted indices (ties:
    the lower index stays)."""
    keep: Keep = {}
    for key, score in scores.items():
        n = counts[key]
        if not 1 <= n <= score.numel():
            raise ValueError(f"{key}: cannot keep {n} of {score.numel()} channels")
        # stable descending sort: among equal scores the lower index comes first
        order = torch.sort(score, descending=True, stable=True).indices[:n]
        keep[key] = torch.sort(order).values.long()
    return keep


# --- activation statistics (calibration) --------------------------------------------------------


@dataclass(frozen=True)
class ChannelStats:
    """One group's activations over the calibration frames: mean and RMS per channel."""

    mean: Tensor
    rms: Tensor

    @property
    def std(self) -> Tensor:
        return (self.rms.square() - self.mean.square()).clamp_min(0).sqrt()


Stats = dict[str, ChannelStats]


class _Accumulator:
    """Sums of x and x**2 per channel (the last dim) over every other dim, in float64."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.squares: Tensor | None = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().double().reshape(-1, x.shape[-1])
        total, squares = x.sum(0), x.square().sum(0)
        if self.total is None:
            self.total, self.squares = total, squares
        else:
            self.total += total
            self.squares += squares
        self.count += x.shape[0]

    def result(self) -> ChannelStats:
        if self.total is None or self.squares is None or not self.count:
            raise ValueError("no calibration frames reached this group")
        mean = (self.total / self.count).float()
        return ChannelStats(mean=mean, rms=(self.squares / self.count).sqrt().float())


@torch.no_grad()
def activation_stats(
    asr: ASR,
    examples: Iterable[tuple[Tensor, Sequence[int]]],
    groups: Iterable[str] | None = None,
) -> Stats:
    """Mean and RMS of every channel of ``groups`` over ``examples``: (waveform (N,) at the
    model's rate, its token ids) pairs, one utterance at a time (no padding), in eval mode.
    The encoder side sees the audio; the predictor sees [blank] + the tokens and the joiner
    every (frame, token) pair of the lattice, as in training. Channels measured: the input
    of each Mamba block's out_proj, of each FFN's second Linear, of the joiner's pred_proj
    (the predictor's units) and its out (the joiner's units), and each front-end stage's
    output."""
    model = asr.model
    keys = list(group_widths(asr, groups))
    acc = {k: _Accumulator() for k in keys}
    hooks = []

    def before(key: str):
        return lambda _module, args: acc[key].add(args[0])

    for key in keys:
        part = model.get_submodule(key)
        if key.endswith(".mamba"):
            hooks.append(part.out_proj.register_forward_pre_hook(before(key)))
        elif key.endswith(".ffn"):
            hooks.append(part.net[3].register_forward_pre_hook(before(key)))
        elif key.startswith("frontend.stages."):
            hook = lambda _m, _a, out, k=key: acc[k].add(out.transpose(1, 2))  # noqa: E731
            hooks.append(part.register_forward_hook(hook))
        elif key == "predictor":
            hooks.append(model.joiner.pred_proj.register_forward_pre_hook(before(key)))
        else:
            hooks.append(model.joiner.out.register_forward_pre_hook(before(key)))
    device = next(model.parameters()).device
    was_training = asr.training
    asr.eval()
    try:
        seen = 0
        for wave, tokens in examples:
            wave = torch.as_tensor(wave, dtype=torch.float32, device=device)[None]  # (1, N)
            feats, lengths = asr.features(wave, torch.tensor([wave.shape[1]], device=device))
            memory = model.encode(feats, lengths).memory  # (1, T, M)
            ids = torch.tensor([[model.blank, *tokens]], dtype=torch.long, device=device)
            pred, _ = model.predictor(ids)  # (1, U+1, P)
            model.joiner(memory[:, :, None, :], pred[:, None, :, :])  # (1, T, U+1, V)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        asr.train(was_training)
    if not seen:
        raise ValueError("no calibration utterances")
    return {k: a.result() for k, a in acc.items()}


def calibration_stats(
    asr: ASR, manifest: str | os.PathLike[str], utterances: int = 32,
    groups: Iterable[str] | None = None,
) -> Stats:  # fmt: skip
    """``activation_stats`` over the first ``utterances`` of a manifest (or LibriSpeech-layout
    folder) whose audio loads; one-line ValueError if none does."""
    from mamba_asr.audio.io import load_audio
    from mamba_asr.evaluate import read_test_set

    test_set = read_test_set(os.fspath(manifest), skip_bad=True)
    rate = asr.config.features.sample_rate

    def examples() -> Iterable[tuple[Tensor, list[int]]]:
        used = 0
        for utt in test_set.utterances:
            if used >= utterances:
                return
            try:
                wave = load_audio(utt.audio, rate)
            except (OSError, ValueError) as exc:
                log.warning("calibration: skipping %s (%s)", utt.audio, exc)
                continue
            used += 1
            yield torch.from_numpy(wave), asr.tokenizer.encode(utt.text)

    try:
        return activation_stats(asr, examples(), groups)
    except ValueError as exc:
        raise ValueError(f"--calib {manifest}: {exc}") from None


def _fold_means(asr: ASR, keep: Keep, stats: Stats, state: dict[str, Tensor]) -> None:
    """Add each removed channel's mean contribution to the bias after it, in ``state`` (full
    sizes, before slicing): W[:, removed] @ mean[removed] into the FFN's second Linear, the
    next front-end pointwise conv (through the depthwise kernel's sum and bias) or ``proj``,
    the joiner's ``pred_proj`` (and ``simple_lm_proj``) and ``out``. Mamba channels have no
    bias after them (out_proj has none): nothing to fold."""
    model = asr.model

    def fold(bias: str, weight: Tensor, gone: Tensor, value: Tensor) -> None:
        name = f"model.{bias}"
        if name not in state:
            return
        w = weight.detach().float().flatten(1) if weight.dim() > 2 else weight.detach().float()
        delta = w[:, gone] @ value  # (out,)
        state[name] = (state[name].float() + delta.to(state[name].device)).to(state[name].dtype)

    for key, idx in keep.items():
        if key.endswith(".mamba") or key not in stats:
            continue
        n = stats[key].mean.numel()
        gone = torch.ones(n, dtype=torch.bool)
        gone[idx] = False
        gone = gone.nonzero().squeeze(1)
        if not gone.numel():
            continue
        mean = stats[key].mean[gone].float()
        part = model.get_submodule(key)
        if key.endswith(".ffn"):
            fold(f"{key}.net.3.bias", part.net[3].weight, gone, mean)
        elif key.startswith("frontend.stages."):
            i = int(key.rsplit(".", 1)[1])
            stages = model.frontend.stages
            if i + 1 < len(stages):
                nxt = stages[i + 1]
                dw = nxt.depthwise
                value = dw.weight.detach().float()[gone].flatten(1).sum(1) * mean
                if dw.bias is not None:
                    value = value + dw.bias.detach().float()[gone]
                fold(f"frontend.stages.{i + 1}.pointwise.bias", nxt.pointwise.weight, gone, value)
            else:
                fold("frontend.proj.bias", model.frontend.proj.weight, gone, mean)
        elif key == "predictor":
            fold("joiner.pred_proj.bias", model.joiner.pred_proj.weight, gone, mean)
            if model.simple_lm_proj is not None:
                fold("simple_lm_proj.bias", model.simple_lm_proj.weight, gone, mean)
        else:
            fold("joiner.out.bias", part.out.weight, gone, mean)


# --- surgery -------------------------------------------------------------------------------------


def _slices(asr: ASR, keep: Keep) -> Slices:
    """For every state-dict key (of ``asr``) a group touches: (dim, kept indices) to select."""
    model = asr.model
    out: Slices = defaultdict(list)
    names = set(asr.state_dict())

    def add(name: str, dim: int, idx: Tensor) -> None:
        if f"model.{name}" in names:
            out[f"model.{name}"].append((dim, idx))

    for key, idx in keep.items():
        if key.endswith(".mamba"):
            d = model.get_submodule(key).d_inner
            both = torch.cat([idx, idx + d])  # x rows, then z rows
            add(f"{key}.in_proj.weight", 0, both)
            add(f"{key}.in_proj.bias", 0, both)
            for p in ("conv1d.weight", "conv1d.bias", "dt_proj.weight", "dt_proj.bias"):
                add(f"{key}.fwd.{p}", 0, idx)
            add(f"{key}.fwd.A_log", 0, idx)
            add(f"{key}.fwd.D", 0, idx)
            add(f"{key}.fwd.x_proj.weight", 1, idx)
            add(f"{key}.out_proj.weight", 1, idx)
        elif key.endswith(".ffn"):
            add(f"{key}.net.0.weight", 0, idx)
            add(f"{key}.net.0.bias", 0, idx)
            add(f"{key}.net.3.weight", 1, idx)
        elif key.startswith("frontend.stages."):
            i = int(key.rsplit(".", 1)[1])
            for p in ("pointwise.weight", "pointwise.bias", "norm.weight", "norm.bias"):
                add(f"{key}.{p}", 0, idx)
            if i + 1 < len(model.frontend.stages):
                nxt = f"frontend.stages.{i + 1}"
                add(f"{nxt}.depthwise.weight", 0, idx)
                add(f"{nxt}.depthwise.bias", 0, idx)
                add(f"{nxt}.pointwise.weight", 1, idx)
            else:
                add("frontend.proj.weight", 1, idx)
        elif key == "predictor":
            add("predictor.embedding.weight", 1, idx)
            add("predictor.conv.weight", 0, idx)
            add("joiner.pred_proj.weight", 1, idx)
            add("simple_lm_proj.weight", 1, idx)
        elif key == "joiner":
            for p in ("enc_proj.weight", "enc_proj.bias", "pred_proj.weight", "pred_proj.bias"):
                add(f"joiner.{p}", 0, idx)
            add("joiner.out.weight", 1, idx)
        else:
            raise ValueError(f"unknown pruning group key {key!r}")
    return out


def pruned_config(config: ModelConfig, keep: Keep) -> ModelConfig:
    """``config`` with the widths of the kept channels: mamba.d_inner, d_ffn, frontend.channels,
    transducer.predictor_dim / joiner_dim. ValueError if layers of one kind would differ in
    width (the config has one number for all of them)."""

    def one(suffix: str, what: str) -> int | None:
        counts = {len(v) for k, v in keep.items() if k.endswith(suffix)}
        if len(counts) > 1:
            raise ValueError(f"{what}: the layers keep different counts {sorted(counts)}")
        return counts.pop() if counts else None

    changes: dict[str, Any] = {}
    d_inner = one(".mamba", "mamba.d_inner")
    unchanged = config.mamba.d_inner is None and d_inner == config.mamba.expand * config.d_model
    if d_inner is not None and not unchanged:  # else d_inner stays implied by expand
        changes["mamba"] = dataclasses.replace(config.mamba, d_inner=d_inner)
    d_ffn = one(".ffn", "d_ffn")
    if d_ffn is not None:
        changes["d_ffn"] = d_ffn
    channels = list(config.frontend.channels)
    for i in range(len(channels)):
        if f"frontend.stages.{i}" in keep:
            channels[i] = len(keep[f"frontend.stages.{i}"])
    changes["frontend"] = dataclasses.replace(config.frontend, channels=tuple(channels))
    t = config.transducer
    t = dataclasses.replace(
        t,
        predictor_dim=len(keep["predictor"]) if "predictor" in keep else t.predictor_dim,
        joiner_dim=len(keep["joiner"]) if "joiner" in keep else t.joiner_dim,
    )
    changes["transducer"] = t
    return dataclasses.replace(config, **changes)


@torch.no_grad()
def prune_asr(
    asr: ASR,
    ratio: float | None = None,
    groups: Iterable[str] | None = None,
    keep: Keep | None = None,
    counts: dict[str, int] | None = None,
    stats: Stats | None = None,
) -> ASR:
    """A new, smaller ``ASR``: ``asr`` with the fraction ``ratio`` of each group's channels
    removed by ``channel_scores`` (or with ``counts[key]`` channels kept, or exactly the
    channels of ``keep``, group key -> kept indices). ``stats`` (``activation_stats``, from
    calibration audio): score by measured activations and fold the removed channels' means
    into the following biases (``_fold_means``). ``asr`` is not changed; the new one is in
    eval mode on the CPU, in ``asr``'s dtype. ratio 0 keeps every channel (the same model)."""
    cfg = asr.config.model
    check_prunable(cfg)
    if keep is None:
        widths = group_widths(asr, groups)
        if counts is None:
            if ratio is None:
                raise ValueError("prune_asr needs ratio, counts or keep")
            _check_ratio(ratio)
            counts = target_counts(widths, ratio)
        keep = choose_channels(channel_scores(asr, groups, stats), counts)
    new_cfg = pruned_config(cfg, keep)
    state = {k: v.detach().cpu() for k, v in asr.state_dict().items()}
    if stats is not None:
        _fold_means(asr, keep, stats, state)
    for name, cuts in _slices(asr, keep).items():
        t = state[name]
        for dim, idx in cuts:
            t = t.index_select(dim, idx)
        state[name] = t.contiguous()
    dtype = next(asr.model.parameters()).dtype
    config = dataclasses.replace(asr.config, model=new_cfg)
    small = ASR(config, asr.tokenizer, dtype=dtype)
    small.load_state_dict(state, strict=True)
    small.shipped_lm = None  # an LM belongs to its model file; pass it with --lm
    return small.eval()


@torch.no_grad()
def mask_channels(asr: ASR, keep: Keep) -> None:
    """Zero, in place, every weight of ``asr`` that pruning to ``keep`` would remove: the
    plain reference of ``prune_asr``. For the mamba, ffn, predictor and joiner groups the
    masked model computes what the pruned one does; a front-end channel still counts in its
    stage's LayerNorm statistics (zero before the norm), so there the two differ."""
    state = asr.state_dict()
    for name, cuts in _slices(asr, keep).items():
        t = state[name]
        for dim, idx in cuts:
            gone = torch.ones(t.shape[dim], dtype=torch.bool, device=t.device)
            gone[idx.to(t.device)] = False
            t.index_fill_(dim, gone.nonzero().squeeze(1), 0)


def parameter_count(asr: ASR) -> int:
    """Parameters of the model (the recognizer; the CMVN statistics not counted)."""
    return sum(p.numel() for p in asr.model.parameters())


# --- model files and the iterative loop --------------------------------------------------------


@dataclass(frozen=True)
class FineTune:
    """Fine-tuning after each pruning round: ``mamba-asr train RECIPE --init ROUND_MODEL
    --train TRAIN --valid VALID --out WORK/round-K/finetune [--set ...]``, i.e. the recipe's
    data and train sections on the pruned model's own architecture and weights."""

    recipe: str
    train: str
    valid: str
    work: str
    overrides: tuple[str, ...] = ()
    device: str | None = None


@dataclass
class PruneReport:
    """What ``prune_model_file`` did: parameters and widths before and after, per round."""

    out: Path
    params_before: int
    params_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    file_bytes: int = 0


def _stored_half(path: Path) -> bool:
    """True if the model file stores its large weights in float16 (``ASR.save(half=True)``)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    return any(
        isinstance(v, Tensor) and v.dtype == torch.float16
        for v in data.get("state_dict", {}).values()
    )


def _summary_widths(widths: dict[str, int]) -> dict[str, int]:
    """Per-kind widths for reports: d_inner, d_ffn, frontend.I, predictor_dim, joiner_dim."""
    out: dict[str, int] = {}
    for key, n in widths.items():
        if key.endswith(".mamba"):
            out["d_inner"] = n
        elif key.endswith(".ffn"):
            out["d_ffn"] = n
        elif key.startswith("frontend.stages."):
            out[f"frontend.{key.rsplit('.', 1)[1]}"] = n
        else:
            out[f"{key}_dim"] = n
    return out


def prune_model_file(
    model: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    ratio: float,
    steps: int = 1,
    groups: Sequence[str] | None = None,
    finetune: FineTune | None = None,
    overwrite: bool = False,
    calib: str | os.PathLike[str] | None = None,
    calib_utterances: int = 32,
) -> PruneReport:
    """Prune the model file or bundled model ``model`` by ``ratio`` (0 < ratio < 1) in
    ``steps`` rounds and write the result to ``out`` (atomically: nothing is written unless
    all of it is; float16 storage if the input had it). ``groups``: default
    ``default_groups``. ``calib``: a manifest (or LibriSpeech-layout folder) whose first
    ``calib_utterances`` utterances measure the activations (``activation_stats``; each round
    measures its own model). ``steps`` > 1 needs ``finetune``: the trainer fine-tunes after
    every round, in ``finetune.work``/round-K (running the same call again resumes there).
    One-line ValueError/OSError for bad input, before any work."""
    from mamba_asr.files import check_output
    from mamba_asr.pretrained import resolve_model

    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ValueError(f"ratio must be in (0, 1): the fraction of channels removed, got {ratio}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps > 1 and finetune is None:
        raise ValueError(
            "steps > 1 needs fine-tuning between the rounds (a recipe, --train and --valid): "
            "with the same weights every round would remove what one round removes"
        )
    if calib_utterances < 1:
        raise ValueError(f"calibration utterances must be >= 1, got {calib_utterances}")
    if calib is not None and not Path(calib).exists():
        raise FileNotFoundError(f"--calib {calib}: no such manifest or folder")
    source = resolve_model(None if model is None else os.fspath(model))
    out = check_output(out, "--out", [source], overwrite)
    if finetune is not None:
        for what, path in (("--train", finetune.train), ("--valid", finetune.valid),
                           ("--recipe", finetune.recipe)):  # fmt: skip
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path}: no such file")
    half = _stored_half(source)
    asr = ASR.load(resolve_model(os.fspath(source)), device="cpu")
    check_prunable(asr.config.model, str(model or source))
    if groups is None:
        groups = default_groups(calib is not None)
    widths = group_widths(asr, groups)
    used_groups = _resolve_groups(asr.config.model, groups)
    before = parameter_count(asr)
    rounds: list[dict[str, Any]] = []
    current: ASR = asr

    def measure(a: ASR) -> Stats | None:
        if calib is None:
            return None
        return calibration_stats(a, calib, calib_utterances, used_groups)

    for k in range(1, steps + 1):
        counts = target_counts(widths, ratio * k / steps)
        if finetune is None:
            current = prune_asr(current, groups=used_groups, counts=counts, stats=measure(current))
            rounds.append({"round": k, "parameters": parameter_count(current)})
            continue
        current, info = _prune_and_finetune(
            current, used_groups, counts, k, finetune, half, measure
        )
        rounds.append(info)
    current.save(out, half=half)
    after = parameter_count(current)
    report = PruneReport(
        out=out, params_before=before, params_after=after,
        widths_before=_summary_widths(widths),
        widths_after=_summary_widths(group_widths(current, used_groups)),
        rounds=rounds, file_bytes=out.stat().st_size,
    )  # fmt: skip
    return report


def _prune_and_finetune(
    asr: ASR,
    groups: Sequence[str],
    counts: dict[str, int],
    k: int,
    ft: FineTune,
    half: bool,
    measure: Any,
) -> tuple[ASR, dict[str, Any]]:
    """Round ``k``: prune to ``counts`` (WORK/round-K/pruned.pt, reused if there), then train
    with ``--init`` on it (WORK/round-K/finetune, resumed if there); the fine-tuned model."""
    from mamba_asr.config import load_recipe
    from mamba_asr.train import train
    from mamba_asr.train.trainer import init_model_section

    folder = Path(ft.work) / f"round-{k}"
    pruned_path = folder / "pruned.pt"
    if pruned_path.is_file():
        log.info("round %d: reusing %s", k, pruned_path)
    else:
        pruned = prune_asr(asr, groups=groups, counts=counts, stats=measure(asr))
        pruned.save(pruned_path, half=half)
    init = str(pruned_path)
    recipe = load_recipe(ft.recipe, list(ft.overrides), model=init_model_section(init),
                         init_from=init)  # fmt: skip
    result = train(recipe, ft.train, ft.valid, folder / "finetune", device=ft.device)
    if result.model_path is None:
        raise RuntimeError(
            f"round {k}: fine-tuning stopped at step {result.step} before its last epoch "
            f"({folder / 'finetune'}); run the same command again to go on"
        )
    tuned = ASR.load(result.model_path, device="cpu")
    return tuned, {"round": k, "parameters": parameter_count(tuned), "pruned": init,
                   "finetuned": str(result.model_path), "steps": result.step}  # fmt: skip
