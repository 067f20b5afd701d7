"""Quantization-aware training (QAT): int8 fake quantization of a model, as its int8 exports run it.

``prepare_qat(asr, scheme)`` changes an ``ASR`` bundle in place so that its model computes what
an int8 export computes, while gradients still reach the float weights (straight-through):

- weights (``scheme`` ``int8`` and ``int8-weights``): every ``nn.Linear``, ``nn.Conv1d`` and
  ``nn.Embedding`` of the model, int8 per output channel (per row of an embedding),
  symmetric, integers -127..127, scale = max |w| / 127 of the channel, recomputed from the
  weight at every use (``torch.nn.utils.parametrize``: ``module.weight`` is the quantized
  weight wherever it is read, also where the model reads it without calling the module, as
  the Mamba block's ``dt_proj``);
- activations (``int8`` only): the input of every such Linear and Conv1d but the two that make
  the selective scan's inputs (each Mamba block's ``x_proj`` and ``dt_proj``: their inputs and
  outputs, and the scan itself, stay fp32), per tensor, affine, integers 0..127 (uint8 with
  7 bits used: the int8 kernels of x86 CPUs without VNNI sum pairs of products in int16 and
  saturate when both operands use 8 bits; measured on AVX2, a matrix product was off by 20 %
  with 8-bit activations, exact with 7), scale and zero point from a moving average (0.01) of
  each batch's min and max in training, frozen in eval mode (so an utterance's result does not
  depend on the batch, and a stream chunk by chunk equals the whole utterance).

The fake quantization is torchao's (``torchao.quantization.pt2e.fake_quantize``:
``FakeQuantize`` for the weights, ``FusedMovingAvgObsFakeQuantize`` for the activations, one
fused op that observes, chooses the scale and quantizes; their observers; the straight-through
gradient of ``torch.fake_quantize_per_*_affine``); this module only puts the quantizers on the
layers. Why not
the other libraries (checked with torch 2.13, torchao 0.18, coremltools 9.0):
``torchao.quantization.qat.QATConfig`` swaps only ``nn.Linear`` (not the depthwise Conv1d), its
int8 activations are dynamic per token or need static shapes, and its symmetric int8 weights
use -128..127 with scale max |w| / 127.5, which Core ML's symmetric int8 (-127..127) cannot
hold exactly; ``torch.ao.quantization``'s prepare functions are deprecated (their warning says
removed in 2.10) and its eager mode needs stubs around every functional op; and
``coremltools.optimize.torch``'s ``LinearQuantizer`` traces the model with torch.fx, which
stops at the model's control flow ("symbolically traced variables cannot be used as inputs to
control flow").

The model file records QAT (``qat_record``, ``apply_record``): the float weights under their
usual names (a mamba-asr that knows nothing of QAT loads the file as a float model) and a
``"qat"`` entry with the scheme, the library and each activation quantizer's min, max, scale
and zero point; ``mamba_asr.asr.ASR.load`` puts the quantizers back.

Exports (``folded``): the fake-quantized weights are written into a copy of the model (every
value an integer times its channel's scale) and the quantizers removed; ``export_onnx(int8=True)``
then stores each such weight as int8 with a ``DequantizeLinear`` and puts ``QuantizeLinear`` /
``DequantizeLinear`` with the learned scale on each quantized input (``qdq_layers``), and Core
ML's per-channel int8 weight compression (``--weights int8``) finds the very same integers
(the largest of each channel is 127, so its scale is the learned one).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mamba_asr.config import INT4_BLOCK, INT4_BLOCKS, QatScheme

__all__ = [
    "INT4_BLOCK",
    "INT4_BLOCKS",
    "INT4_RANGE",
    "QAT_SCHEMES",
    "Int4WeightQuantizer",
    "QuantizedLayer",
    "apply_record",
    "check_scheme",
    "folded",
    "int4_block",
    "observers_frozen",
    "prepare_qat",
    "qat_record",
    "qat_scheme",
    "split_state_dict",
]

QAT_SCHEMES: tuple[str, ...] = get_args(QatScheme)
WEIGHT_RANGE = (-127, 127)  # symmetric int8, as Core ML's and onnxruntime's symmetric weights
INT4_RANGE = (-8, 7)  # int4-weights: signed 4 bits
INT4_SCHEME = "int4-weights"
ACTIVATION_RANGE = (0, 127)  # uint8, 7 bits: see the module docstring
ACTIVATION_AVERAGING = 0.01
SCAN_INPUTS = ("x_proj", "dt_proj")  # their inputs stay fp32
LAYERS = (nn.Linear, nn.Conv1d, nn.Embedding)
INPUT_QUANT = "input_quant"
PARAM_KEY = ".parametrizations.weight.original"
WEIGHT_QUANT_KEY = ".parametrizations.weight.0."


def check_scheme(scheme: Any, key: str = "qat") -> str:
    """``scheme`` if it is one of ``QAT_SCHEMES``, else a one-line ``ValueError`` naming them."""
    if scheme not in QAT_SCHEMES:
        allowed = ", ".join(QAT_SCHEMES)
        raise ValueError(f"{key} must be one of {allowed}, got {scheme!r}")
    return scheme


def _torchao() -> dict[str, Any]:
    """torchao's fake quantizer and observers (imported on first use, its load notes off)."""
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        import torchao
        from torchao.quantization.pt2e.fake_quantize import (
            FakeQuantize,
            FusedMovingAvgObsFakeQuantize,
        )
        from torchao.quantization.pt2e.observer import (
            MovingAverageMinMaxObserver,
            MovingAveragePerChannelMinMaxObserver,
        )
    except ImportError:
        raise ImportError(
            "quantization-aware training needs torchao: pip install 'mamba-asr[qat]'"
        ) from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return {
        "version": torchao.__version__,
        "fake_quant": FakeQuantize,
        "fused_fake_quant": FusedMovingAvgObsFakeQuantize,
        "tensor": MovingAverageMinMaxObserver,
        "channel": MovingAveragePerChannelMinMaxObserver,
    }


class _KeptQuantizer(nn.Module):
    """A weight's fake quantizer (``quantize``); in eval mode without gradients the result is
    kept until the weight changes (decoding reads the joiner's weights at every step)."""

    def __init__(self) -> None:
        super().__init__()
        self._kept: tuple[Any, Tensor] | None = None

    def quantize(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, w: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled():
            self._kept = None
            return self.quantize(w)
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, self.quantize(w))
        return self._kept[1]


class WeightQuantizer(_KeptQuantizer):
    """Symmetric int8 per output channel (dim 0), scale = max |w| / 127 from the weight it is
    given (torchao's ``FakeQuantize``, its observer a moving average with weight 1: nothing of
    earlier weights). Not the fused op: for a channel whose weights all have one sign it
    falls back to an affine scale and a zero point (a 5-tap depthwise kernel can be all
    positive)."""

    def __init__(self) -> None:
        super().__init__()
        ao = _torchao()
        self.fq = ao["fake_quant"](
            observer=ao["channel"], quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1],
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
            averaging_constant=1.0,
        )  # fmt: skip

    def quantize(self, w: Tensor) -> Tensor:
        return self.fq(w)

    @property
    def scale(self) -> Tensor:
        return self.fq.scale

    @property
    def zero_point(self) -> Tensor:
        return self.fq.zero_point


def weight_quantizer() -> WeightQuantizer:
    """A new ``WeightQuantizer``."""
    return WeightQuantizer()


def int4_blocks(w: Tensor, block: int = INT4_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """A Linear weight (out, in) -> its blocks (out * n, block) (n = ceil(in / block), the last
    block padded with zeros), each block's scale (out * n,) and sign (out * n,), without
    gradients: scale = the block's largest magnitude / 8 rounded to float16 (at least 2**-24),
    sign = -1 where that value is positive, so that (sign * block) / scale puts it at q = -8.
    onnxruntime's symmetric int4 (scale = that value / -8, a signed scale) is sign * scale."""
    out, k = w.shape
    blocks = nn.functional.pad(w, (0, -k % block)).reshape(-1, block)  # (out * n, block)
    with torch.no_grad():
        largest = blocks.gather(1, blocks.abs().argmax(1, keepdim=True))[:, 0].float()
        scale = (largest.abs() / -INT4_RANGE[0]).to(torch.float16).float().clamp(min=2**-24)
        sign = torch.where(largest > 0, -1.0, 1.0)
    return blocks, scale, sign


class Int4WeightQuantizer(_KeptQuantizer):
    """Symmetric int4 of a Linear weight (out, in) in blocks of ``block`` input channels (dim
    1), integers -8..7, the convention of ``int4_blocks`` (onnxruntime's ``MatMulNBits``
    quantizer's, with float16 scales: the int4 graphs store their scales in float16, exactly).
    The rounding and the straight-through gradient (zero where clipped) are PyTorch's own
    ``torch.fake_quantize_per_channel_affine`` on the blocks as channels, a maintained op
    (CPU and CUDA kernels, its gradient tested upstream) rather than a hand-written round
    with a detach; the scales are chosen here, as the export will store them, not by an
    observer."""

    def __init__(self, block: int = INT4_BLOCK) -> None:
        super().__init__()
        self.block = block

    def quantize(self, w: Tensor) -> Tensor:
        """w: (out, in) or a pointwise convolution's (out, in, 1) -> the same shape."""
        flat = w.reshape(w.shape[0], -1)
        blocks, scale, sign = int4_blocks(flat, self.block)  # (out * n, block), (out * n,) x 2
        zero = torch.zeros_like(scale, dtype=torch.int32)
        q = torch.fake_quantize_per_channel_affine(
            blocks * sign[:, None], scale, zero, 0, INT4_RANGE[0], INT4_RANGE[1]
        )
        return (q * sign[:, None]).reshape(w.shape[0], -1)[:, : flat.shape[1]].reshape(w.shape)


class InputQuantizer(nn.Module):
    """Per-tensor affine fake quantization of a layer's input (``ACTIVATION_RANGE``): observes
    (moving min and max) in training mode only; in eval mode the scale is frozen."""

    def __init__(self) -> None:
        super().__init__()
        ao = _torchao()
        self.fq = ao["fused_fake_quant"](
            observer=ao["tensor"], quant_min=ACTIVATION_RANGE[0], quant_max=ACTIVATION_RANGE[1],
            dtype=torch.quint8, qscheme=torch.per_tensor_affine,
            averaging_constant=ACTIVATION_AVERAGING,
        )  # fmt: skip

    def train(self, mode: bool = True) -> InputQuantizer:
        super().train(mode)
        self.observe(mode)
        return self

    def observe(self, on: bool) -> None:
        (self.fq.enable_observer if on else self.fq.disable_observer)()

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:  # under autocast: quantize in fp32
            return self.fq(x.float()).to(x.dtype)
        return self.fq(x)

    def qparams(self) -> tuple[float, int]:
        """The scale and zero point in force."""
        return float(self.fq.scale.reshape(-1)[0]), int(self.fq.zero_point.reshape(-1)[0])


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (getattr(module, INPUT_QUANT)(args[0]), *args[1:])


def _layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if type(module) in LAYERS or (
            isinstance(module, LAYERS) and parametrize.is_parametrized(module, "weight")
        ):
            yield name, module


def qat_scheme(asr: nn.Module) -> str | None:
    """The QAT scheme ``asr`` was prepared with, or None."""
    return getattr(asr, "qat_scheme", None)


def _pointwise(module: nn.Module) -> bool:
    """A pointwise convolution (kernel 1, one group): a matrix product of the channels, which
    the int4 graphs run as ``MatMulNBits`` (``export.onnx.pointwise_conv_as_matmul``)."""
    return isinstance(module, nn.Conv1d) and module.kernel_size == (1,) and module.groups == 1


def prepare_qat(
    asr: nn.Module, scheme: str, block: int = INT4_BLOCK, pointwise: bool = True
) -> nn.Module:
    """Put the fake quantizers of ``scheme`` on ``asr.model`` (in place; see the module
    docstring); returns ``asr``. ``block``: the input channels that share a scale
    (``int4-weights`` only); ``pointwise``: int4 on the pointwise convolutions too (False:
    the Linear layers only, as int4 QAT was before; model files of then load so). The weights
    stay the float weights being trained (their parameters keep their objects: build the
    optimizer after or before, either works)."""
    check_scheme(scheme)
    if qat_scheme(asr) is not None:
        raise ValueError(f"the model is already prepared for QAT ({qat_scheme(asr)})")
    if block != INT4_BLOCK and scheme != INT4_SCHEME:
        raise ValueError(f"a block of input channels is for {INT4_SCHEME} only, not {scheme}")
    if block not in INT4_BLOCKS:
        raise ValueError(f"the int4 block must be one of {', '.join(map(str, INT4_BLOCKS))}, "
                         f"got {block}")  # fmt: skip
    int4 = scheme == INT4_SCHEME
    for name, module in list(_layers(asr.model)):
        int4_layer = isinstance(module, nn.Linear) or (pointwise and _pointwise(module))
        if int4 and not int4_layer:
            continue  # the int4 graphs keep the other convolutions and the embedding in fp16
        # on the weight's device: registering runs the quantizer on the weight at once
        quantizer = (Int4WeightQuantizer(block) if int4 else weight_quantizer()).to(
            module.weight.device
        )
        parametrize.register_parametrization(module, "weight", quantizer)
        quantized_input = not isinstance(module, nn.Embedding) and (
            name.rsplit(".", 1)[-1] not in SCAN_INPUTS
        )
        if scheme == "int8" and quantized_input:
            quantizer = InputQuantizer().to(module.parametrizations.weight.original.device)
            module.add_module(INPUT_QUANT, quantizer.train(asr.training))
            module.register_forward_pre_hook(_quantize_input)
    asr.qat_scheme = scheme
    return asr


def _input_quantizers(asr: nn.Module) -> dict[str, InputQuantizer]:
    return {
        name: module for name, module in asr.named_modules() if isinstance(module, InputQuantizer)
    }


class observers_frozen:  # noqa: N801 (a context manager, used like a function)
    """Inside the block the activation quantizers of ``asr`` do not observe (a stand-in batch
    must not move their ranges); their state is restored after."""

    def __init__(self, asr: nn.Module) -> None:
        self.quantizers = list(_input_quantizers(asr).values())

    def __enter__(self) -> None:
        self.was = [int(q.fq.observer_enabled[0]) for q in self.quantizers]
        for q in self.quantizers:
            q.observe(False)

    def __exit__(self, *exc: object) -> None:
        for q, was in zip(self.quantizers, self.was, strict=True):
            q.observe(bool(was))


def split_state_dict(
    state_dict: dict[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A QAT model's state_dict -> (the float weights under their usual names, the activation
    quantizers' tensors); the weight quantizers' buffers (recomputed at every use) are left out."""
    plain, quantizers = {}, {}
    for key, value in state_dict.items():
        if WEIGHT_QUANT_KEY in key:
            continue
        if f".{INPUT_QUANT}." in key:
            quantizers[key] = value
        else:
            plain[key.replace(PARAM_KEY, ".weight")] = value
    return plain, quantizers


def qat_record(asr: nn.Module, state_dict: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """What the model file keeps of a QAT model (``state_dict``: its weights, default the
    model's own, e.g. an average of checkpoints): {"scheme", "library", "activations": {layer:
    {"min_val", "max_val", "scale", "zero_point"}}}, scale and zero point chosen from the
    min and max (for an average, the average's)."""
    scheme = qat_scheme(asr)
    if scheme is None:
        raise ValueError("the model is not prepared for QAT")
    state_dict = asr.state_dict() if state_dict is None else state_dict
    activations = {}
    for name, quantizer in _input_quantizers(asr).items():
        fq = copy.deepcopy(quantizer.fq).cpu()
        prefix = f"{name}.fq."
        fq.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items()
                            if k.startswith(prefix)})  # fmt: skip
        observer = fq.activation_post_process
        with warnings.catch_warnings():  # a layer that never ran (e.g. the aux CTC head)
            warnings.simplefilter("ignore")  # keeps the default scale 1, zero point 0
            scale, zero_point = observer.calculate_qparams()
        layer = name.removeprefix("model.").removesuffix(f".{INPUT_QUANT}")
        activations[layer] = {
            "min_val": observer.min_val.detach().cpu().float().reshape(()),
            "max_val": observer.max_val.detach().cpu().float().reshape(()),
            "scale": scale.detach().cpu().float().reshape(()),
            "zero_point": zero_point.detach().cpu().to(torch.int64).reshape(()),
        }
    library = f"torch {torch.__version__}" if scheme == INT4_SCHEME else (
        f"torchao {_torchao()['version']}")  # fmt: skip
    record = {"scheme": scheme, "library": library, "activations": activations}
    if scheme == INT4_SCHEME:
        record["block"] = int4_block(asr)
        record["pointwise"] = any(
            _pointwise(m) and parametrize.is_parametrized(m, "weight") for m in asr.model.modules()
        )
    return record


def int4_block(asr: nn.Module) -> int:
    """The block of an ``int4-weights`` QAT model's quantizers."""
    blocks = {m.block for m in asr.model.modules() if isinstance(m, Int4WeightQuantizer)}
    if len(blocks) != 1:
        raise ValueError(f"the model's int4 quantizers do not share one block: {sorted(blocks)}")
    return blocks.pop()


def apply_record(asr: nn.Module, record: Any) -> nn.Module:
    """Prepare ``asr`` (its float weights loaded) as the model file's ``"qat"`` entry says, the
    activation quantizers set to their recorded ranges; ValueError (one line) if the record
    does not fit the model. A scheme without activation quantizers may leave out
    ``"activations"``."""
    if not isinstance(record, dict) or not isinstance(record.get("activations", {}), dict):
        raise ValueError("its qat entry is not a dict with activations")
    record = {"activations": {}, **record}
    # int4 QAT files made before "block": blocks of 32, the Linear layers only; "block" came
    # with the pointwise convolutions (a file with "block" and no "pointwise" quantized them)
    block, pointwise = record.get("block", INT4_BLOCK), record.get("pointwise", "block" in record)
    if not isinstance(block, int) or block not in INT4_BLOCKS:
        raise ValueError(f"its qat block must be one of {', '.join(map(str, INT4_BLOCKS))}, "
                         f"got {block!r}")  # fmt: skip
    if not isinstance(pointwise, bool):
        raise ValueError(f"its qat pointwise must be true or false, got {pointwise!r}")
    prepare_qat(asr, check_scheme(record.get("scheme"), "its qat scheme"), block, pointwise)
    quantizers = _input_quantizers(asr)
    names = {n.removeprefix("model.").removesuffix(f".{INPUT_QUANT}") for n in quantizers}
    if set(record["activations"]) != names:
        diff = sorted(set(record["activations"]) ^ names)
        raise ValueError(f"its qat activations do not fit the model (e.g. {diff[0]})")
    for name, quantizer in quantizers.items():
        entry = record["activations"][name.removeprefix("model.").removesuffix(f".{INPUT_QUANT}")]
        fq = quantizer.fq
        with torch.no_grad():
            fq.activation_post_process.min_val.copy_(entry["min_val"])
            fq.activation_post_process.max_val.copy_(entry["max_val"])
            fq.scale.copy_(entry["scale"].reshape(fq.scale.shape))
            fq.zero_point.copy_(entry["zero_point"].reshape(fq.zero_point.shape))
    return asr


@dataclass(frozen=True)
class QuantizedLayer:
    """One quantized layer of a folded model: its name, kind (``linear``, ``conv1d``,
    ``embedding``), the folded weight (numpy, fp32, as the module holds it), the integers
    and scales that make it, and the input's (scale, zero point), or None where the input
    stays float. int8 (``block`` None): weight = q * scale along dim 0; int4 (``block``: the
    input channels of a block): q (out, in) in -8..7, scale (out, ceil(in / block)) signed,
    weight = q * scale repeated ``block`` times along dim 1."""

    name: str
    kind: str
    weight: np.ndarray
    q: np.ndarray
    scale: np.ndarray
    input_qparams: tuple[float, int] | None
    block: int | None = None


def _int4_layer(name: str, weight: Tensor, block: int, kind: str) -> QuantizedLayer:
    """The folded int4 weight of a Linear (out, in) or a pointwise Conv1d (out, in, 1) as
    ``QuantizedLayer`` (its weight, integers and scales as (out, in) matrices)."""
    weight = weight.reshape(weight.shape[0], -1)
    blocks, scale, sign = int4_blocks(weight, block)
    signed = scale * sign  # (out * n,)
    q = torch.round(blocks / signed[:, None]).clamp(*INT4_RANGE)  # (out * n, block)
    if not torch.equal(q * signed[:, None], blocks):
        raise RuntimeError(f"{name}: the quantized weight is not q * scale")
    out, k = weight.shape
    q = q.reshape(out, -1)[:, :k]
    return QuantizedLayer(name, kind, weight.numpy(), q.numpy().astype(np.int8),
                          signed.reshape(out, -1).numpy(), None, block)  # fmt: skip


def folded(asr: nn.Module) -> tuple[nn.Module, list[QuantizedLayer]]:
    """A new float ``ASR`` (eval mode, CPU) with a QAT model's quantized weights as its plain
    weights and no quantizers (what exports convert), and the quantized layers (for the int8
    graphs). ``asr`` itself is left as it is."""
    if qat_scheme(asr) is None:
        raise ValueError("the model is not prepared for QAT")
    weights, _ = split_state_dict(asr.state_dict())
    layers = []
    with torch.no_grad():
        for name, module in _layers(asr.model):
            if not parametrize.is_parametrized(module, "weight"):
                continue
            weight = module.weight.detach().float().cpu()  # quantized with this weight's scale
            weights[f"model.{name}.weight"] = weight
            quantizer = module.parametrizations.weight[0]
            kind = next(k for t, k in _KINDS.items() if isinstance(module, t))
            if isinstance(quantizer, Int4WeightQuantizer):
                layers.append(_int4_layer(name, weight, quantizer.block, kind))
                continue
            scale = quantizer.scale.detach().float().cpu()
            view = (-1,) + (1,) * (weight.dim() - 1)
            q = torch.round(weight / scale.view(view)).clamp(*WEIGHT_RANGE)
            if not torch.equal(q * scale.view(view), weight):
                raise RuntimeError(f"{name}: the quantized weight is not q * scale")
            quantizer = getattr(module, INPUT_QUANT, None)
            layers.append(QuantizedLayer(
                name, kind, weight.numpy(), q.numpy().astype(np.int8),
                scale.numpy().astype(np.float32),
                quantizer.qparams() if isinstance(quantizer, InputQuantizer) else None,
            ))  # fmt: skip
    plain = type(asr)(asr.config, asr.tokenizer)
    plain.load_state_dict(weights)
    plain.shipped_lm = getattr(asr, "shipped_lm", None)
    return plain.eval(), layers


_KINDS = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Embedding: "embedding"}
