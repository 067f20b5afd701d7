"""Configs: frozen, annotated dataclasses read from YAML recipes, with errors that name the key.

A recipe is a YAML mapping whose sections match ``RecipeConfig``'s fields (today: ``model``).
Every key is checked against the dataclass it fills: an unknown key, a wrong type or a value outside
the allowed set raises ``ConfigError`` naming the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema; the message names the key."""


@dataclass(frozen=True)
class MambaConfig:
    """Selective state-space block options (mamba's defaults)."""

    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    bidirectional: bool = True


@dataclass(frozen=True)
class FrontendConfig:
    """Convolutional front end: stride-2 Conv2d stages over (time, mel), 4x time subsampling."""

    n_mels: int = 80
    channels: tuple[int, ...] = (64, 32)
    kernel_size: int = 3
    stride: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """An encoder (+ optional decoder) ASR model; ``num_decoder_layers: 0`` means CTC only."""

    vocab_size: int
    encoder_module: Literal["conformer", "conmamba", "transformer"] = "conmamba"
    decoder_module: Literal["transformer", "mamba"] = "transformer"
    d_model: int = 256
    nhead: int = 4
    num_encoder_layers: int = 12
    num_decoder_layers: int = 0
    d_ffn: int = 1024
    kernel_size: int = 31
    dropout: float = 0.1
    activation: Literal["gelu", "relu", "swish"] = "gelu"  # decoders and the transformer encoder
    # conformer/conmamba layers; None: as in Mamba-ASR (swish for conformer, gelu for conmamba)
    encoder_activation: Literal["gelu", "relu", "swish"] | None = None
    conv_norm: Literal["layernorm", "batchnorm"] = "layernorm"
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    blank_index: int = 0
    pad_index: int = 0
    bos_index: int = 1
    eos_index: int = 2
    mamba: MambaConfig = field(default_factory=MambaConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "d_model", "nhead", "num_encoder_layers", "d_ffn")
        if self.num_decoder_layers < 0:
            raise ConfigError(
                f"model.num_decoder_layers must be >= 0, got {self.num_decoder_layers}"
            )
        if self.d_model % self.nhead:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.nhead ({self.nhead})"
            )
        for name in ("dropout", "ctc_weight", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def kind(self) -> Literal["ctc", "seq2seq"]:
        return "ctc" if self.num_decoder_layers == 0 else "seq2seq"


@dataclass(frozen=True)
class RecipeConfig:
    """A whole recipe file."""

    model: ModelConfig


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1, got {getattr(obj, name)}")


# --- YAML / dict -> dataclass ------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value to the annotated type ``tp``; ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}; allowed: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], dotted)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(
            f"missing key{'s' if len(missing) > 1 else ''}{where}: {', '.join(missing)}"
        )
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(str(e)) from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) of a config dataclass, the inverse of ``from_dict``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to a nested dict, in a copy."""
    out = yaml.safe_load(yaml.safe_dump(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a YAML recipe (plus ``key=value`` overrides) into a checked ``RecipeConfig``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return from_dict(RecipeConfig, apply_overrides(data, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
