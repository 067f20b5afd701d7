"""Export of a streaming transducer to Core ML: one stateful ML program package.

Shape key
    t: feature frames of a chunk (fixed), C: mel bins, t': encoder frames (t / S), M: d_model,
    N: hypotheses, K: the predictor's context, J: joiner_dim, V: vocabulary (blank included).

``export_coreml(asr, out)`` writes ``out`` (``X.mlpackage``), an ML program for iOS 18 /
macOS 15 with fp16 compute and three functions (one package, ``ct.utils.save_multifunction``):

- ``encoder`` (the default function): ``StatefulEncoder``, the model's own ``forward_chunk``
  on one stream whose state tensors are registered buffers, declared to Core ML as states
  (``ct.StateType``, fp16) under their buffer names: ``state_frontend_caches_<i>`` (the front
  end's caches), ``state_encoder_layers_<i>_conv`` and ``state_encoder_layers_<i>_ssm`` (each
  Mamba layer's conv and SSM states). feats (1, t, C) in, memory (1, t', M) and its joiner
  projection ``encoder_proj`` (1, t', J) out; t is fixed (``chunk_ms`` rounded down to whole
  encoder frames: 32 frames at 320 ms). While exporting, the selective scan runs as
  ``unrolled`` (one step per encoder frame: coremltools converts no ``scan`` operator);
- ``predictor``: tokens (N, 1) and ``predictor_state`` (N, K - 1), int32 (the stateless
  predictor's last tokens) in, ``predictor_proj`` (N, J) and ``new_predictor_state`` out;
- ``joiner``: ``encoder_proj`` (N, J), ``predictor_proj`` (N, J) -> ``logits`` (N, V);
  N from 1 to ``MAX_HYPOTHESES`` in both.

The package's user-defined metadata ``mamba_asr`` holds a JSON object: format and version,
feature settings and CMVN statistics, vocabulary, blank, subsampling, chunk frames and the
state layout. ``weights``: ``int8`` (per-channel linear) or ``int4`` (linear, blocks of 32
input channels) weight compression with ``coremltools.optimize.coreml``.

A model trained with quantization-aware training (``mamba_asr.qat``) is converted with its
quantized weights (``mamba_asr.qat.folded``: each an integer of -127..127 times its channel's
scale), so ``weights="int8"`` stores exactly those integers; its activations run in fp16 (the
``int8`` scheme's activation quantizers are left out; ``int8-weights`` trains without them).
The metadata's ``qat`` names the scheme (null for other models).

The conversion runs on Linux; a prediction needs macOS. The package is built next to ``out``
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamba_asr import __version__
from mamba_asr.export.onnx import (
    JoinerStep,
    PredictorStep,
    check_exportable,
    rebuild_state,
    state_leaves,
)
from mamba_asr.files import check_output
from mamba_asr.ops.selective_scan import export_backend
from mamba_asr.qat import folded, qat_scheme
from mamba_asr.streaming import STREAM_CHUNK_MS, stream_chunk_frames

__all__ = [
    "COREML_FORMAT",
    "FUNCTIONS",
    "MAX_HYPOTHESES",
    "METADATA_KEY",
    "WEIGHTS",
    "StatefulEncoder",
    "check_package_path",
    "export_coreml",
    "export_program",
    "state_name",
]

COREML_FORMAT = "mamba-asr-coreml"
COREML_VERSION = 1
METADATA_KEY = "mamba_asr"
FUNCTIONS = ("encoder", "predictor", "joiner")
WEIGHTS = ("int8", "int4")
MAX_HYPOTHESES = 64  # the largest N of the predictor and joiner (a beam of 64)
INT4_BLOCK = 32  # input channels per int4 scale


def state_name(dotted: str) -> str:
    """A state tree's dotted name (``state.encoder.layers.0.ssm``) as a Core ML name."""
    return dotted.replace(".", "_")


class StatefulEncoder(nn.Module):
    """``model.forward_chunk`` on one stream with the state kept in buffers: feats (1, t, C)
    -> (memory (1, t', M), encoder projection (1, t', J)); each call reads the buffers and
    writes the state after the chunk back into them (``copy_``), which ``torch.export``
    records as buffer mutations and coremltools turns into Core ML state updates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        start = model.init_state(1)
        self.template = start
        self.names = []
        for dotted, tensor in state_leaves(start, "state"):
            if bool(tensor.any()):
                raise ValueError(f"cannot export the state {dotted}: Core ML states start at 0")
            self.register_buffer(state_name(dotted), tensor.clone())
            self.names.append(state_name(dotted))

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        state = rebuild_state(self.template, [getattr(self, n) for n in self.names])
        memory, new = self.model.forward_chunk(feats, state)
        for name, (_, tensor) in zip(self.names, state_leaves(new, "state"), strict=True):
            getattr(self, name).copy_(tensor)
        return memory, self.model.joiner.project_encoder(memory)  # (1, t', M), (1, t', J)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools' notes (untested torch version, no macOS runtime) and progress bars off,
    unless logging is at INFO or below (``mamba-asr --verbose``)."""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        yield
        return
    logging.disable(logging.WARNING)  # coremltools also logs on the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _check_predictor(model: nn.Module) -> None:
    """A one-line ``ValueError`` unless the predictor is stateless with a context of 2 or more
    (its state, the last tokens, is then an int32 input of the ``predictor`` function)."""
    predictor = model.predictor
    size = getattr(predictor, "context_size", None)
    if size is None or size < 2:
        what = type(predictor).__name__ + ("" if size is None else f" with context_size {size}")
        raise ValueError(
            f"Core ML export needs the stateless predictor with context_size >= 2, this model "
            f"has {what}"
        )


def export_program(
    module: nn.Module, args: tuple[Tensor, ...], dynamic_shapes: Any = None
) -> torch.export.ExportedProgram:
    """What coremltools converts: ``torch.export`` with the selective scan unrolled, in the
    ATen dialect (``run_decompositions``), where buffer writes are buffer mutations."""
    with export_backend("unrolled"):
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    return program.run_decompositions({})


def _convert(part: str, module: nn.Module, args: tuple[Tensor, ...], **convert: Any) -> Any:
    """``torch.export`` then ``ct.convert`` to an iOS 18 ML program in fp16; a failure is one
    line naming the part."""
    import coremltools as ct

    dynamic = convert.pop("dynamic_shapes", None)
    try:
        program = export_program(module, args, dynamic)
        return ct.convert(
            program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16, **convert,
        )  # fmt: skip
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"Core ML conversion of the {part} failed: {reason}") from exc


def _encoder(model: nn.Module, frames: int, n_mels: int) -> Any:
    import coremltools as ct

    module = StatefulEncoder(model).eval()
    states = [
        ct.StateType(
            wrapped_type=ct.TensorType(shape=tuple(getattr(module, n).shape), dtype=np.float16),
            name=n,
        )
        for n in module.names
    ]
    feats = torch.randn(1, frames, n_mels)
    return _convert(
        "encoder", module, (feats,),
        inputs=[ct.TensorType(name="feats", shape=tuple(feats.shape), dtype=np.float16)],
        outputs=[ct.TensorType(name="memory"), ct.TensorType(name="encoder_proj")],
        states=states,
    )  # fmt: skip


def _predictor(model: nn.Module) -> Any:
    import coremltools as ct

    hyps = torch.export.Dim("hyps", min=1, max=MAX_HYPOTHESES)
    n = ct.RangeDim(lower_bound=1, upper_bound=MAX_HYPOTHESES, default=1)
    state = model.predictor.init_state(2)  # an example of 2: export would fix a dim of 1
    tokens = torch.full((2, 1), 3, dtype=torch.int32)
    return _convert(
        "predictor", PredictorStep(model).eval(), (tokens, state.int()),
        inputs=[
            ct.TensorType(name="tokens", shape=(n, 1), dtype=np.int32),
            ct.TensorType(name="predictor_state", shape=(n, state.shape[1]), dtype=np.int32),
        ],
        outputs=[ct.TensorType(name="predictor_proj"), ct.TensorType(name="new_predictor_state")],
        dynamic_shapes=({0: hyps}, ({0: hyps},)),  # forward(tokens, *state)
    )  # fmt: skip


def _joiner(model: nn.Module, joiner_dim: int) -> Any:
    import coremltools as ct

    hyps = torch.export.Dim("hyps", min=1, max=MAX_HYPOTHESES)
    n = ct.RangeDim(lower_bound=1, upper_bound=MAX_HYPOTHESES, default=1)
    proj = torch.randn(2, joiner_dim)
    return _convert(
        "joiner", JoinerStep(model).eval(), (proj, proj.clone()),
        inputs=[
            ct.TensorType(name="encoder_proj", shape=(n, joiner_dim), dtype=np.float16),
            ct.TensorType(name="predictor_proj", shape=(n, joiner_dim), dtype=np.float16),
        ],
        outputs=[ct.TensorType(name="logits")],
        dynamic_shapes=({0: hyps}, {0: hyps}),
    )  # fmt: skip


def _compress(mlmodel: Any, weights: str) -> Any:
    """Weights to int8 (per output channel) or int4 (per block of ``INT4_BLOCK`` inputs)."""
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OptimizationConfig,
        linear_quantize_weights,
    )

    if weights == "int8":
        op = OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"
        )
    else:
        op = OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=INT4_BLOCK
        )
    return linear_quantize_weights(mlmodel, OptimizationConfig(global_config=op))


def _metadata(
    asr: nn.Module,
    frames: int,
    encoder: StatefulEncoder,
    weights: str | None,
    qat: str | None = None,
) -> str:
    fbank, model = asr.fbank, asr.model
    layout = [
        {"name": n, "shape": list(getattr(encoder, n).shape), "dtype": "float16"}
        for n in encoder.names
    ]
    config = {
        "format": COREML_FORMAT,
        "version": COREML_VERSION,
        "mamba_asr_version": __version__,
        "weights": weights or "float16",
        "qat": qat,
        "functions": list(FUNCTIONS),
        "features": {
            "sample_rate": asr.sample_rate,
            "n_mels": fbank.n_mels,
            "n_fft": fbank.n_fft,
            "win_length": fbank.win_length,
            "hop_length": fbank.hop_length,
            "log_floor": fbank.log_floor,
            "window": "hann-periodic",
            "center": False,
            "cmvn_mean": asr.cmvn.mean.detach().cpu().float().tolist(),
            "cmvn_std": asr.cmvn.std.detach().cpu().float().tolist(),
        },
        "model": {
            "kind": asr.config.model.kind,
            "vocab_size": model.vocab_size,
            "blank": model.blank,
            "subsampling": model.subsampling,
            "joiner_dim": model.joiner.out.in_features,
            "context_size": model.predictor.context_size,
        },
        "chunk_frames": frames,
        "max_hypotheses": MAX_HYPOTHESES,
        "encoder_state": layout,
    }
    return json.dumps(config, separators=(",", ":"))


def _build(
    asr: nn.Module, folder: Path, frames: int, weights: str | None, qat: str | None = None
) -> Path:
    """The three functions as packages in ``folder``, then merged into ``folder/model``."""
    import coremltools as ct

    model = asr.model
    parts = {
        "encoder": _encoder(model, frames, asr.config.features.n_mels),
        "predictor": _predictor(model),
        "joiner": _joiner(model, model.joiner.out.in_features),
    }
    meta = _metadata(asr, frames, StatefulEncoder(model), weights, qat)
    desc = ct.utils.MultiFunctionDescriptor()
    for name, mlmodel in parts.items():
        if weights is not None:
            mlmodel = _compress(mlmodel, weights)
        path = folder / f"{name}.mlpackage"
        mlmodel.save(str(path))
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = "encoder"
    merged = folder / "merged.mlpackage"
    ct.utils.save_multifunction(desc, str(merged))
    # the merged package has no metadata of its own: write its spec again with it
    package = ct.models.MLModel(str(merged), skip_model_load=True)
    spec = package.get_spec()
    spec.description.metadata.shortDescription = "mamba-asr streaming transducer"
    spec.description.metadata.userDefined[METADATA_KEY] = meta
    final = folder / "model.mlpackage"
    ct.utils.save_spec(spec, str(final), weights_dir=package.weights_dir)
    return final


def check_package_path(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``out`` if a package can be written there: a one-line error for a name without the
    ``.mlpackage`` suffix, an existing ``out`` (unless ``overwrite``) or a place that cannot
    be written (``mamba_asr.files.check_output``)."""
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise ValueError(f"--out {out}: a Core ML package's name ends in .mlpackage")
    return check_output(out, "--out", overwrite=overwrite, folder=True)


def export_coreml(
    asr: nn.Module,
    out: str | os.PathLike[str],
    *,
    weights: str | None = None,
    chunk_ms: float = STREAM_CHUNK_MS,
    overwrite: bool = False,
) -> Path:
    """Export ``asr`` (an ``ASR`` bundle of a streaming transducer) to the package ``out``.

    weights: None (fp16), ``int8`` or ``int4``; chunk_ms: the encoder's fixed chunk, rounded
    down to whole encoder frames. Raises a one-line ``ValueError`` for a model without a
    streaming form, an ``out`` without the ``.mlpackage`` suffix or that exists (unless
    ``overwrite``) or cannot be made, or a part that does not convert; on any error nothing is
    left at ``out``.
    """
    check_exportable(asr, "Core ML")
    _check_predictor(asr.model)
    if weights not in (None, *WEIGHTS):
        raise ValueError(f"weights must be one of {WEIGHTS} or None, got {weights!r}")
    if importlib.util.find_spec("coremltools") is None:
        raise ImportError("Core ML export needs coremltools: pip install 'mamba-asr[export]'")
    out = check_package_path(out, overwrite)
    frames = stream_chunk_frames(asr, chunk_ms)
    qat = qat_scheme(asr)
    if qat is not None:  # its quantized weights as plain weights (activations: fp16)
        asr, _ = folded(asr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        was_training = asr.training
        asr.eval()
        try:
            with torch.no_grad(), _quiet():
                merged = _build(asr, tmp, frames, weights, qat)
        finally:
            asr.train(was_training)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            merged.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            merged.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
