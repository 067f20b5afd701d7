"""The deployable ASR bundle: features, normalisation, augmentation, model, tokenizer.

Shape key
    B: batch, N: samples, F: feature frames, C: mel bins, S: target tokens.

``ASR`` turns waveforms into a training loss (``forward``) or into text (``transcribe_batch``,
and streams: ``create_stream`` / ``decode_streams``, see ``mamba_asr.streaming``) with
everything that decides the result inside one module: ``Fbank`` -> ``GlobalCMVN`` ->
``SpecAugment`` (training mode only, given by the recipe) -> the model of ``config.model``;
the tokenizer maps between text and ids. ``save`` writes one file, ``ASR.load`` rebuilds it.

The model file (format version 2) is a ``torch.save`` of a plain dict, ``{"format":
"mamba-asr-model", "version": 2, "mamba_asr_version", "model", "features", "state_dict",
"tokenizer"}``: the architecture (``ModelConfig``) and the features (``FeatureConfig``) as
dicts of plain values, the weights (model and CMVN statistics) as tensors, and the tokenizer's
files as bytes; nothing of training, so renaming or adding a training option cannot break a
model. A model trained with quantization-aware training (``train.qat``) also has ``"qat"``:
its scheme and its activation quantizers' ranges (``mamba_asr.qat``); its ``state_dict`` holds
the float weights under their usual names, so a reader that ignores ``"qat"`` gets the float
model. Nothing else is pickled: it loads with ``torch.load(weights_only=True)``. Version 1
files (the whole recipe under ``"config"``) still load: their ``model`` and the features of
their ``data`` section are read, the rest ignored; ``upgrade_bundle`` converts one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mamba_asr import __version__
from mamba_asr.atomic import atomic_save
from mamba_asr.audio.augment import SpecAugment
from mamba_asr.audio.features import Fbank, GlobalCMVN
from mamba_asr.config import (
    ConfigError,
    FeatureConfig,
    InferenceConfig,
    ModelConfig,
    RecipeConfig,
    SpecAugmentConfig,
    from_dict,
    infer_model_kind,
    to_dict,
)
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.decode.search import decode_batch
from mamba_asr.device import autocast, parse_dtype
from mamba_asr.models.factory import build_model
from mamba_asr.models.losses import LossOutput
from mamba_asr.text.tokenizer import CharTokenizer, SentencePieceTokenizer, load_tokenizer

__all__ = [
    "ASR",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BundleError",
    "eval_mode",
    "tokenizer_from_files",
    "tokenizer_to_files",
    "upgrade_bundle",
]

BUNDLE_FORMAT = "mamba-asr-model"
BUNDLE_VERSION = 2

if TYPE_CHECKING:
    from mamba_asr.decode.endpoint import EndpointConfig
    from mamba_asr.streaming import Stream

Tokenizer = CharTokenizer | SentencePieceTokenizer
StrPath = str | os.PathLike[str]


class BundleError(ValueError):
    """A model file that is missing, unreadable or not a mamba-asr model; one-line message."""


class ASR(nn.Module):
    """Waveforms -> loss or text; see the module docstring.

    ``config``: the architecture and the features (``InferenceConfig``); ``tokenizer``: its
    ``vocab_size`` must equal ``config.model.vocab_size``; ``specaugment``: the training-time
    augmentation (none at inference). ``ASR.from_recipe`` builds one from a training recipe.
    ``shipped_lm``: the LM file that ships with the model (what ``lm="auto"`` uses), set by
    ``mamba_asr.load_model`` for a bundled model.
    """

    def __init__(
        self,
        config: InferenceConfig,
        tokenizer: Tokenizer,
        specaugment: SpecAugmentConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        vtlp: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        if not isinstance(config, InferenceConfig):
            raise TypeError(
                f"ASR takes an InferenceConfig, got {type(config).__name__} (a recipe: "
                "ASR.from_recipe)"
            )
        if tokenizer.vocab_size != config.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size ({config.model.vocab_size}) must equal the tokenizer's "
                f"vocabulary size ({tokenizer.vocab_size})"
            )
        self.config, self.tokenizer = config, tokenizer
        self.shipped_lm: str | None = None
        # inference precision: None runs fp32; torch.float16 / torch.bfloat16 run the model's
        # matrix products under autocast (features, scan states and log-softmax stay fp32)
        self.compute_dtype: torch.dtype | None = None
        self.fbank = Fbank(config.features.sample_rate, config.features.n_mels, device=device)
        self.cmvn = GlobalCMVN(config.features.n_mels, device=device)
        aug = specaugment
        self.specaugment = (
            SpecAugment(
                aug.freq_masks,
                aug.freq_width,
                aug.time_masks,
                aug.time_width_ratio,
                aug.time_width,
                aug.time_warp,
            )  # fmt: skip
            if aug is not None and aug.enabled
            else None
        )
        self.vtlp = tuple(vtlp)  # [low, high] warp factors in training (recipe data.vtlp)
        self.model = build_model(config.model, device=device, dtype=dtype)

    @classmethod
    def from_recipe(
        cls,
        recipe: RecipeConfig,
        tokenizer: Tokenizer,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ASR:
        """The model a training recipe describes, with its SpecAugment and VTLP."""
        config = InferenceConfig.from_recipe(recipe)
        return cls(config, tokenizer, recipe.data.specaugment, device=device, dtype=dtype,
                   vtlp=recipe.data.vtlp)  # fmt: skip

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    # --- inference ---------------------------------------------------------------------------

    def resolve_options(self, options: DecodingOptions | None = None) -> DecodingOptions:
        """``options`` (default ``DecodingOptions()``) checked against this model: ``lm="auto"``
        made this model's shipped LM or none, an LM checked against the tokenizer, the fusion
        weights set (``DecodingOptions.resolve``)."""
        options = options or DecodingOptions()
        kind = self.config.model.kind
        vocab = self.config.model.vocab_size
        return options.resolve(kind, self.tokenizer, vocab, self.shipped_lm)

    def create_stream(
        self,
        options: DecodingOptions | None = None,
        chunk_ms: float | None = None,
        endpoint: EndpointConfig | None = None,
        name: str | None = None,
    ) -> Stream:
        """A new ``mamba_asr.streaming.Stream`` (streaming models only; ``chunk_ms`` default
        320 ms; ``endpoint`` default ``EndpointConfig()``)."""
        from mamba_asr.streaming import STREAM_CHUNK_MS, Stream

        chunk = STREAM_CHUNK_MS if chunk_ms is None else chunk_ms
        return Stream(self, self.resolve_options(options), chunk, endpoint, name)

    def decode_streams(self, streams: list[Stream]) -> None:
        """Decode what is ready in ``streams`` (of this model) in one batch per step; see
        ``mamba_asr.streaming.decode_streams``."""
        from mamba_asr.streaming import decode_streams

        if any(s.asr is not self for s in streams):
            raise ValueError("decode_streams: every stream must come from this model")
        with eval_mode(self):
            decode_streams(streams)

    def set_precision(self, dtype: str | torch.dtype | None) -> ASR:
        """Inference precision: "fp32" (or None), "fp16" or "bf16" (autocast on the model's
        device, for CUDA and MPS; on a CPU it runs but is slower than fp32). Returns self."""
        self.compute_dtype = None if dtype is None else parse_dtype(dtype)
        if self.compute_dtype == torch.float32:
            self.compute_dtype = None
        return self

    def precision(self) -> contextlib.AbstractContextManager:
        """The context in which inference runs the model (see ``set_precision``)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return autocast(next(self.model.parameters()).device, self.compute_dtype)

    def raw_features(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, N), wave_lengths (B,) -> log-Mel feats (B, F, C) before CMVN, lengths."""
        return self.fbank(waves, wave_lengths)

    def features(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, N), wave_lengths (B,) -> normalised feats (B, F, C) and lengths (B,);
        VTLP (a warp factor per utterance) and SpecAugment are applied in training mode."""
        warp = None
        if self.vtlp and self.training:
            warp = torch.empty(waves.shape[0], device=waves.device).uniform_(*self.vtlp)
        feats, lengths = self.fbank(waves, wave_lengths, warp)  # (B, F, C), (B,)
        feats = self.cmvn(feats, lengths)
        if self.specaugment is not None and self.training:
            feats = self.specaugment(feats, lengths)
        return feats, lengths

    def forward(
        self, waves: Tensor, wave_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> LossOutput:
        """Training loss: waves (B, N) with wave_lengths (B,), targets (B, S) padded token ids
        (no bos/eos) with target_lengths (B,)."""
        feats, lengths = self.features(waves, wave_lengths)
        return self.model.loss(feats, lengths, targets, target_lengths)

    @torch.no_grad()
    def transcribe_batch(
        self, waves: Tensor, wave_lengths: Tensor, options: DecodingOptions | None = None
    ) -> list[str]:
        """Texts of a padded batch of waveforms (B, N) at ``sample_rate`` with lengths (B,).

        Runs in eval mode (restoring the module's mode afterwards); ``options`` are resolved
        for this model (``resolve_options``; default ``DecodingOptions()``).
        """
        options = self.resolve_options(options)
        with eval_mode(self):
            feats, lengths = self.features(waves, wave_lengths)
            with self.precision():
                results = decode_batch(self.model, feats, lengths, options)
        return [self.tokenizer.decode(r.tokens) for r in results]

    # --- one-file bundle ----------------------------------------------------------------------

    def bundle(
        self, state_dict: dict[str, Tensor] | None = None, half: bool = False
    ) -> dict[str, Any]:
        """The dict ``save`` writes; ``state_dict`` replaces this module's weights (e.g. an
        average of checkpoints). half: store floating-point tensors of more than
        ``HALF_MIN_NUMEL`` values in float16, half the size (small ones, such as the CMVN
        statistics and norms, stay float32); loading casts them back to the model's dtype."""
        weights = self.state_dict() if state_dict is None else state_dict
        qat = None
        if getattr(self, "qat_scheme", None) is not None:  # float weights + the quantizers
            from mamba_asr.qat import qat_record, split_state_dict

            qat = qat_record(self, weights)
            weights, _ = split_state_dict(weights)
        if half:
            weights = {k: _half(v) for k, v in weights.items()}
        bundle = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "mamba_asr_version": __version__,
            "model": _model_section(self.config.model),
            "features": to_dict(self.config.features),
            "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
            "tokenizer": tokenizer_to_files(self.tokenizer),
        }
        if qat is not None:
            bundle["qat"] = qat
        return bundle

    def save(
        self, path: StrPath, state_dict: dict[str, Tensor] | None = None, half: bool = False
    ) -> Path:
        """Write the bundle to ``path`` atomically (temporary file + rename); returns the path.
        ``state_dict`` and ``half`` as for ``bundle``."""
        return atomic_save(self.bundle(state_dict, half), path)

    @classmethod
    def load(cls, path: StrPath, device: torch.device | str | None = None) -> ASR:
        """Rebuild a bundle written by ``save``, in eval mode, on ``device`` (default: CPU).

        Raises ``BundleError`` (one line) for a missing, unreadable or foreign file.
        """
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: no such model file")
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
                raise BundleError(f"{path}: not a mamba-asr model file (not a PyTorch archive)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # zip, pickle and runtime errors all mean "not our file"
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise BundleError(f"{path}: not a readable mamba-asr model file ({reason})") from None
        return cls.from_bundle(data, device=device, source=str(path))

    @classmethod
    def from_bundle(
        cls, data: Any, device: torch.device | str | None = None, source: str = "bundle"
    ) -> ASR:
        """``load`` from the dict in memory; ``source`` names it in error messages."""
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            hint = ""
            if isinstance(data, dict) and data.get("format") == "mamba-asr-checkpoint":
                hint = " (it is a training checkpoint; the trainer writes model.pt for use)"
            raise BundleError(f"{source}: not a mamba-asr model file{hint}")
        if data.get("version") not in (1, BUNDLE_VERSION):
            raise BundleError(
                f"{source}: model file version {data.get('version')!r}, this mamba-asr "
                f"({__version__}) reads versions 1 and {BUNDLE_VERSION}"
            )
        try:
            data = upgrade_bundle(data)
            config = InferenceConfig(
                from_dict(ModelConfig, data["model"], "model"),
                from_dict(FeatureConfig, data["features"], "features"),
            )
            tokenizer = tokenizer_from_files(data["tokenizer"])
            asr = cls(config, tokenizer, device=device)
            asr.load_state_dict(data["state_dict"])
            if data.get("qat") is not None:  # a QAT model: its fake quantizers back on
                from mamba_asr.qat import apply_record

                apply_record(asr, data["qat"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise BundleError(f"{source}: broken mamba-asr model file ({reason})") from None
        return asr.eval()


HALF_MIN_NUMEL = 4096
FEATURE_KEYS = ("sample_rate", "n_mels")


def upgrade_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A model-file dict in the current format: a version 1 file (the whole recipe under
    ``"config"``) keeps its ``model`` section and the features of its ``data`` section; its
    training settings are dropped unread. The current format is returned as it is."""
    if data.get("version") == BUNDLE_VERSION:
        return data
    config = data["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError("no model section in the config")
    features = {k: v for k, v in (config.get("data") or {}).items() if k in FEATURE_KEYS}
    model = dict(config["model"])
    kind = model.setdefault("kind", infer_model_kind(model))
    if kind == "transducer":
        model.pop("decoder_module", None)  # was "transducer"; now the kind says it
        model.pop("num_decoder_layers", None)
    rest = {k: v for k, v in data.items() if k not in ("config", "version")}
    return {**rest, "version": BUNDLE_VERSION, "model": model, "features": features}


def _model_section(config: ModelConfig) -> dict[str, Any]:
    """``to_dict(config)`` without ``mamba.d_inner`` when it is None (the default: expand *
    d_model), so that a model of the usual widths is the same file as before the key existed
    and older mamba-asr versions read it; a pruned model's file names its d_inner."""
    model = to_dict(config)
    if model["mamba"].get("d_inner") is None:
        model["mamba"].pop("d_inner", None)
    return model


def _half(t: Tensor) -> Tensor:
    if t.is_floating_point() and t.numel() > HALF_MIN_NUMEL:
        return t.to(torch.float16)
    return t


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its mode restored after."""
    was_training = module.training
    if not was_training:  # nothing to switch (walking every submodule costs, per chunk)
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def tokenizer_to_files(tokenizer: Tokenizer) -> dict[str, bytes]:
    """The files ``tokenizer.save`` writes, as {name: bytes}."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]) -> Tokenizer:
    if not isinstance(files, dict) or not files:
        raise ValueError("no tokenizer files")
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            if Path(name).name != name or not isinstance(content, bytes):
                raise ValueError(f"bad tokenizer file entry {name!r}")
            (Path(tmp) / name).write_bytes(content)
        return load_tokenizer(tmp)
