"""``MlxASR``: a model file's transducer in MLX behind the interface of ``mamba_asr.asr.ASR``.

The audio front end stays the package's own (PyTorch ``Fbank`` and ``GlobalCMVN``: the same
features as the PyTorch path, converted to MLX through NumPy, a copy of (T, 80) floats per
chunk); the network and the searches run in MLX. Because ``MlxASR`` offers what
``mamba_asr.streaming.Stream``, ``mamba_asr.transcription`` and ``mamba_asr.evaluate`` use of a
bundle (``model`` with the streaming protocol, ``fbank``, ``cmvn``, ``tokenizer``, ``config``,
``sample_rate``, ``resolve_options``, ``transcribe_batch``), transcription, streams, the endpoint
rule, transcripts and writers are shared, not copied.

The exported folder (``export``, ``mamba-asr export mlx``)::

    config.json        {"format": "mamba-asr-mlx", "version": 1, "model": ModelConfig,
                        "features": FeatureConfig, "mamba_asr_version"}
    model.safetensors  the weights, float32, named as in PyTorch without "model." (and
                        "cmvn.mean", "cmvn.std")
    tokenizer/         the tokenizer's files
    lm.npz             the LM shipped with the model, if any
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import torch
from torch import Tensor, nn

from mamba_asr import __version__
from mamba_asr.asr import ASR
from mamba_asr.audio.features import Fbank, GlobalCMVN
from mamba_asr.backends.mlx.model import MlxTransducer, build_model
from mamba_asr.backends.mlx.search import make_search
from mamba_asr.config import FeatureConfig, InferenceConfig, ModelConfig, from_dict, to_dict
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.files import check_output, read_text
from mamba_asr.text.tokenizer import load_tokenizer

__all__ = ["EXPORT_FORMAT", "MlxASR", "export", "load"]

EXPORT_FORMAT = "mamba-asr-mlx"
EXPORT_VERSION = 1
CMVN_KEYS = ("mean", "std")


class MlxASR(nn.Module):
    """Features (PyTorch) + the MLX transducer + the tokenizer; see the module docstring.

    A torch ``nn.Module`` only for its feature buffers (``eval_mode`` and the device of the
    feature tensors); the model's weights are MLX arrays in ``model``.
    """

    def __init__(
        self,
        config: InferenceConfig,
        tokenizer: Any,
        model: MlxTransducer,
        cmvn: dict[str, np.ndarray],
        shipped_lm: str | None = None,
    ) -> None:
        super().__init__()
        self.config, self.tokenizer, self.shipped_lm = config, tokenizer, shipped_lm
        self.fbank = Fbank(config.features.sample_rate, config.features.n_mels)
        self.cmvn = GlobalCMVN(config.features.n_mels)
        for key in CMVN_KEYS:
            getattr(self.cmvn, key).copy_(torch.from_numpy(np.asarray(cmvn[key], np.float32)))
        self.model = model

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The feature tensors (where ``Stream`` and ``evaluate`` put audio): the MLX weights
        are not torch parameters."""
        yield self.cmvn.mean  # type: ignore[misc]

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    # --- building --------------------------------------------------------------------------

    @classmethod
    def from_asr(cls, asr: ASR) -> MlxASR:
        """The MLX twin of a PyTorch bundle (weights converted to float32)."""
        weights = {
            k.removeprefix("model."): v.detach().float().cpu().numpy()
            for k, v in asr.state_dict().items()
            if k.startswith("model.") and v.is_floating_point()
        }
        model = build_model(asr.config.model, weights)
        cmvn = {k: getattr(asr.cmvn, k).float().cpu().numpy() for k in CMVN_KEYS}
        return cls(asr.config, asr.tokenizer, model, cmvn, asr.shipped_lm)

    @classmethod
    def load_folder(cls, folder: str | os.PathLike[str]) -> MlxASR:
        """Read a folder written by ``export``; ValueError (one line) for a foreign one."""
        folder = Path(folder)
        try:
            meta = json.loads(read_text(folder / "config.json"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder}: not an MLX model folder ({exc})") from None
        if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
            raise ValueError(f"{folder}: not an MLX model folder of version {EXPORT_VERSION}")
        config = InferenceConfig(
            from_dict(ModelConfig, meta["model"], "model"),
            from_dict(FeatureConfig, meta["features"], "features"),
        )
        arrays = mx.load(str(folder / "model.safetensors"))
        cmvn = {k: np.array(arrays.pop(f"cmvn.{k}")) for k in CMVN_KEYS}
        model = build_model(config.model, arrays)
        lm = folder / "lm.npz"
        tokenizer = load_tokenizer(folder / "tokenizer")
        return cls(config, tokenizer, model, cmvn, str(lm) if lm.is_file() else None)

    # --- inference (as ASR) ----------------------------------------------------------------

    def resolve_options(self, options: DecodingOptions | None = None) -> DecodingOptions:
        """As ``ASR.resolve_options``: ``lm="auto"`` becomes the shipped LM for beam search."""
        options = options or DecodingOptions()
        model = self.config.model
        return options.resolve(model.kind, self.tokenizer, model.vocab_size, self.shipped_lm)

    def create_stream(
        self,
        options: DecodingOptions | None = None,
        chunk_ms: float | None = None,
        endpoint: Any = None,
        name: str | None = None,
    ) -> Any:
        """A ``mamba_asr.streaming.Stream`` decoded by the MLX model (as ``ASR.create_stream``)."""
        from mamba_asr.streaming import STREAM_CHUNK_MS, Stream

        chunk = STREAM_CHUNK_MS if chunk_ms is None else chunk_ms
        return Stream(self, self.resolve_options(options), chunk, endpoint, name)

    def decode_streams(self, streams: list[Any]) -> None:
        """Decode what is ready in ``streams`` (of this model), streams with chunks of one
        length in one MLX batch; see ``mamba_asr.streaming.decode_streams``."""
        from mamba_asr.streaming import decode_streams

        if any(s.asr is not self for s in streams):
            raise ValueError("decode_streams: every stream must come from this model")
        decode_streams(streams)

    def features(self, waves: Tensor, wave_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waves (B, N), wave_lengths (B,) -> normalised feats (B, F, C), lengths (B,)."""
        feats, lengths = self.fbank(waves, wave_lengths)
        return self.cmvn(feats, lengths), lengths

    @torch.no_grad()
    def decode_features(self, feats: Any, lengths: Any, options: DecodingOptions) -> list:
        """Best hypothesis (``TransducerHypothesis``) of each utterance of a padded batch of
        normalised features (B, F, C) with lengths (B,); ``options`` resolved."""
        memory, out_lengths = self.model.encode(feats, lengths)  # (B, L, M), (B,)
        search = make_search(self.model, memory.shape[0], options)
        search.advance_frames(self.model.joiner.project_encoder(memory), np.array(out_lengths))
        return [nbest[0] for nbest in search.nbest()]

    @torch.no_grad()
    def transcribe_batch(
        self, waves: Tensor, wave_lengths: Tensor, options: DecodingOptions | None = None
    ) -> list[str]:
        """Texts of a padded batch of waveforms (B, N) with lengths (B,), as
        ``ASR.transcribe_batch`` (one utterance, one segment: no endpointing)."""
        options = self.resolve_options(options)
        feats, lengths = self.features(waves, wave_lengths)
        hyps = self.decode_features(feats, lengths, options)
        return [self.tokenizer.decode(h.tokens) for h in hyps]


def load(name_or_path: str | os.PathLike[str] | None = None) -> MlxASR:
    """An ``MlxASR`` of a folder from ``export``, or of a model file or bundled model name
    (converted on the fly, as ``mamba_asr.load_model`` reads it)."""
    if name_or_path is not None and Path(name_or_path).is_dir():
        return MlxASR.load_folder(name_or_path)
    from mamba_asr.pretrained import bundled_lm, resolve_model

    path = resolve_model(name_or_path)
    asr = ASR.load(path, device="cpu")
    lm = bundled_lm(path)
    asr.shipped_lm = None if lm is None else str(lm)
    return MlxASR.from_asr(asr)


def export(asr: ASR | MlxASR, out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``asr`` (a PyTorch bundle or an ``MlxASR``) as an MLX model folder ``out`` (see
    the module docstring); written in a temporary folder beside it, then renamed."""
    out = check_output(out, "--out", overwrite=overwrite, folder=True)
    mlx_asr = asr if isinstance(asr, MlxASR) else MlxASR.from_asr(asr)
    from mlx.utils import tree_flatten

    arrays = dict(tree_flatten(mlx_asr.model.parameters()))
    for key in CMVN_KEYS:
        arrays[f"cmvn.{key}"] = mx.array(getattr(mlx_asr.cmvn, key).numpy())
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "mamba_asr_version": __version__,
        "model": to_dict(mlx_asr.config.model),
        "features": to_dict(mlx_asr.config.features),
    }
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), arrays)
        (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        mlx_asr.tokenizer.save(tmp / "tokenizer")
        if mlx_asr.shipped_lm is not None:
            shutil.copyfile(mlx_asr.shipped_lm, tmp / "lm.npz")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
