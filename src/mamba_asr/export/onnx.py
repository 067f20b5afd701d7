"""Export of a streaming transducer to ONNX: encoder chunk, predictor and joiner graphs.

Shape key
    B: streams, t: feature frames of a chunk, C: mel bins, t': encoder frames (ceil(t / S)),
    M: d_model, N: hypotheses, J: joiner_dim, V: vocabulary (blank included).

``export_onnx(asr, out)`` writes a folder that ``mamba_asr.runtime.onnx`` reads without
PyTorch (file names and ``config.json`` keys: ``mamba_asr.runtime.onnx``):

- ``encoder.onnx``: the model's own ``forward_chunk`` (``EncoderChunk`` flattens the state tree
  to tensors): feats (B, t, C) and every state tensor in, memory (B, t', M), its joiner
  projection (B, t', J) and every new state tensor out; B and t are symbolic. While exporting,
  the selective scan runs as PyTorch's ``scan`` operator (``ops.selective_scan.exportable``),
  one ONNX ``Scan`` node, so the graph takes chunks of any length;
- ``encoder_chunk.onnx``: the same, for chunks of at most ``chunk_ms`` (320 ms: the runtime's
  streaming step), with the scan unrolled: one multiply-add per encoder frame of a full chunk
  (a shorter chunk's missing frames leave the state as it is), no ``Scan``. Made from
  ``ChunkStep`` (``export.chunk_step``: the same step laid out time first, every shape fixed
  but the batch, for a small graph), or for a model it does not take and for QAT models from
  ``forward_chunk`` itself (``export_backend("unrolled", steps)``). The runtime takes it for
  every chunk up to that length and ``encoder.onnx`` for longer ones (offline);
- ``predictor.onnx``: one token per hypothesis (N, 1) and the predictor state in, its
  projection (N, J) and the new state out;
- ``joiner.onnx``: projections (N, J) and (N, J) in, logits (N, V) out;
- ``tokenizer/``, ``features.npz`` (CMVN mean and std, the mel matrix), ``lm.npz`` (the LM that
  ships with a bundled model) and ``config.json`` (feature settings, special ids, state layout);
- with ``int8``: ``*.int8.onnx``, the three graphs with weights quantized to int8 by
  onnxruntime's dynamic quantization; for a model trained with quantization-aware training
  (``mamba_asr.qat``), QDQ graphs instead (``qdq_graph``): the int8 weights and the learned
  activation scales of the fake-quantized model, which they compute. Every graph of such a
  model (the fp32 ones too) holds its quantized weights (``mamba_asr.qat.folded``);
- with ``int4``: ``*.int4.onnx``, the graphs with the weight of every matrix product (the
  predictor's and joiner's ``Gemm`` too, rewritten as ``MatMul`` and ``Add``) in int4, in
  blocks of ``int4_block`` input channels with one scale a block, symmetric (onnxruntime's
  ``MatMulNBits``, which computes with int8 activations: accuracy level 4); the scales and the
  other big weights (convolutions, embedding, the scan's A and D) stored in fp16
  (``floats_as_fp16``). The smallest export: 7.8 MB for the bundled model. For a model trained with int4 QAT
  (``int4-weights``), the ``MatMulNBits`` hold the model's own integers and scales
  (``int4_qat_graph``), whose dequantized weights are its fake-quantized weights exactly.

The exporter's metadata on every node (the PyTorch source line and module of each, about
0.7 MB a graph) is dropped.

``export_encoder_onnx(asr, path)`` writes one graph of a research model (CTC or joint
CTC/attention, ``models/ctc.py``, ``models/seq2seq.py``, any encoder of ``ENCODERS``): its front
end, encoder and CTC head on a padded batch, feats (B, F, C) and feat_lengths (B,) in,
memory (B, T, M), lengths (B,) and ctc_log_probs (B, T, V) out, B and F symbolic; padding does
not leak (a padded batch gives each utterance's own outputs within its length).

Graphs use the dynamo exporter (``torch.onnx.export(dynamo=True)``) at opset 18 (17 gives an
invalid Split). Nothing is written to ``out`` until everything is made: the folder is built
next to it under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamba_asr import __version__
from mamba_asr.export import INT4_BLOCK, INT4_BLOCKS, INT4_METHODS
from mamba_asr.export.chunk_step import ChunkStep, supports_chunk_step, time_first
from mamba_asr.files import check_output
from mamba_asr.models.streaming import map_state
from mamba_asr.ops.selective_scan import export_backend
from mamba_asr.qat import ACTIVATION_RANGE, folded, qat_scheme
from mamba_asr.runtime.onnx import (
    CHUNK_GRAPH,
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    FEATURES_FILE,
    GRAPHS,
    LM_FILE,
    TOKENIZER_DIR,
    int8_name,
    quant_name,
)
from mamba_asr.streaming import STREAM_CHUNK_MS, stream_chunk_frames

__all__ = [
    "INT4_METHODS",
    "OPSET",
    "EncoderChunk",
    "JoinerStep",
    "PredictorStep",
    "ResearchEncoder",
    "conv1d_as_conv2d",
    "export_encoder_onnx",
    "export_onnx",
    "onnx_state",
    "plain_softplus",
    "pointwise_weights",
    "state_leaves",
]

OPSET = 18


def state_leaves(tree: Any, prefix: str) -> list[tuple[str, Tensor]]:
    """The tensors of a state tree with dotted names (``prefix.frontend.caches.0``), in the
    order ``map_state`` visits them."""
    if isinstance(tree, Tensor):
        return [(prefix, tree)]
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        items = list(zip(tree._fields, tree, strict=True))
    elif isinstance(tree, (tuple, list)):
        items = [(str(i), x) for i, x in enumerate(tree)]
    elif isinstance(tree, dict):
        items = list(tree.items())
    else:
        raise TypeError(f"cannot export a state leaf of type {type(tree).__name__}")
    return [leaf for key, x in items for leaf in state_leaves(x, f"{prefix}.{key}")]


def onnx_state(state: Any, config: dict[str, Any]) -> list[np.ndarray]:
    """A PyTorch encoder state tree as the encoder graphs of an export (its ``config.json``)
    take and give it: flat, in order, each tensor transposed for a ``time_first`` layout."""
    time_first_ = config.get("encoder_state_layout") == "time_first"
    return [
        (time_first(t) if time_first_ else t).detach().cpu().contiguous().numpy()
        for _, t in state_leaves(state, "s")
    ]


def rebuild_state(template: Any, tensors: list[Tensor] | tuple[Tensor, ...]) -> Any:
    """The tree of ``template`` with its tensors replaced by ``tensors``, in order."""
    it = iter(tensors)
    return map_state(lambda _: next(it), template)


class EncoderChunk(nn.Module):
    """``model.forward_chunk`` with the state as flat tensors: (feats, *state) -> (memory,
    encoder projection, *new state); with ``time_first``, each state tensor in and out in
    ``ChunkStep``'s layout (``chunk_step.time_first``)."""

    def __init__(self, model: nn.Module, time_first: bool = False) -> None:
        super().__init__()
        self.model, self.time_first = model, time_first
        self.template = model.init_state(1)

    def forward(self, feats: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        view = time_first if self.time_first else (lambda t: t)
        state = tuple(view(t) for t in state)
        memory, new = self.model.forward_chunk(feats, rebuild_state(self.template, state))
        proj = self.model.joiner.project_encoder(memory)  # (B, t', J)
        return (memory, proj, *(view(t) for _, t in state_leaves(new, "s")))


class PredictorStep(nn.Module):
    """One predictor step: (tokens (N, 1), *state) -> (projection (N, J), *new state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.template = model.predictor.init_state(1)

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        out, new = self.model.predictor(tokens, rebuild_state(self.template, state))
        proj = self.model.joiner.project_predictor(out[:, 0])  # (N, J)
        return (proj, *(t for _, t in state_leaves(new, "s")))


class JoinerStep(nn.Module):
    """The joiner on projected inputs: (encoder (N, J), predictor (N, J)) -> logits (N, V)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        return self.model.joiner.join(enc_proj, pred_proj)


class ResearchEncoder(nn.Module):
    """A CTC or seq2seq model's front end, encoder and CTC head: (feats (B, F, C),
    feat_lengths (B,)) -> (memory (B, T, M), lengths (B,), ctc_log_probs (B, T, V))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, lengths = self.model.frontend(feats, feat_lengths)  # (B, T, M), (B,)
        memory = self.model.encoder(x, lengths)  # (B, T, M)
        log_probs = self.model.ctc_lin(memory).float().log_softmax(dim=-1)  # (B, T, V)
        return memory, lengths, log_probs


def export_encoder_onnx(
    asr: nn.Module, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Export the encoder of ``asr`` (an ``ASR`` bundle of a CTC or seq2seq model) as one ONNX
    graph at ``path`` (see the module docstring); the input is normalised features (after
    ``asr.features``). A one-line ``ValueError`` for another kind of model or a ``path`` that
    exists (unless ``overwrite``) or cannot be made; on any error nothing is left at ``path``.
    """
    kind = asr.config.model.kind
    if kind not in ("ctc", "seq2seq"):
        raise ValueError(
            f"export_encoder_onnx takes a ctc or seq2seq model, this one is {kind} "
            f"(export_onnx exports a streaming transducer)"
        )
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'mamba-asr[export]'"
        )
    path = check_output(path, "path", overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    Dim = torch.export.Dim
    batch, frames = Dim("batch", min=1), Dim("frames", min=8)
    # an example of 2 utterances of different lengths (never 1: export would fix the dim)
    n_mels = asr.config.features.n_mels
    feats, lengths = torch.randn(2, 64, n_mels), torch.tensor([64, 41])
    was_training = asr.training
    try:
        asr.eval()
        with torch.no_grad():
            _export_graph(
                ResearchEncoder(asr.model).eval(), (feats, lengths), tmp,
                ["feats", "feat_lengths"], ["memory", "lengths", "ctc_log_probs"],
                ({0: batch, 1: frames}, {0: batch}),
            )  # fmt: skip
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        asr.train(was_training)
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_exportable(asr: nn.Module, target: str = "ONNX") -> None:
    """A one-line ``ValueError`` unless ``asr``'s model is a streaming transducer; ``target``
    names the export in the message."""
    model = asr.model
    if not hasattr(model, "forward_chunk") or not hasattr(model, "joiner"):
        raise ValueError(
            f"{target} export needs a streaming transducer model, this one is "
            f"{asr.config.model.kind} (it does not stream)"
        )
    try:
        model.init_state(1)
    except TypeError as exc:
        raise ValueError(f"{target} export needs a streaming model: {exc}") from None


def _layout(
    init_state: Callable[..., Any], prefix: str, view: Callable[[Tensor], Tensor] | None = None
) -> list[dict[str, Any]]:
    """Name, shape (batch 1), dtype, batch dim and start value of each state tensor (as
    ``view`` lays it out)."""
    one, two = state_leaves(init_state(1), prefix), state_leaves(init_state(2), prefix)
    out = []
    for (name, a), (_, b) in zip(one, two, strict=True):
        if view is not None:
            a, b = view(a), view(b)
        diff = [d for d, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
        values = a.flatten().unique()
        if len(diff) != 1 or values.numel() > 1:
            raise ValueError(f"cannot export the state tensor {name}: {tuple(a.shape)}")
        fill = values.item() if values.numel() else 0
        dtype = str(a.dtype).removeprefix("torch.")
        out.append({"name": name, "shape": list(a.shape), "dtype": dtype, "batch_dim": diff[0],
                    "fill": fill})  # fmt: skip
    return out


def _dims(layout: list[dict[str, Any]], batch: Any) -> tuple[dict[int, Any], ...]:
    """The dynamic shapes of the ``*state`` arguments: their batch dims."""
    return tuple({s["batch_dim"]: batch} for s in layout)


@contextlib.contextmanager
def _quiet(logger: str, level: int) -> Iterator[None]:
    """The logger named ``logger`` at ``level`` for the block, its own level after."""
    log = logging.getLogger(logger)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


def _export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
) -> None:
    import onnx

    # quiet: torch.onnx's notes on torchvision ops and the like
    with _quiet("torch.onnx", logging.ERROR), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
            output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False,
            optimize=True, external_data=False,
        )  # fmt: skip
    model = program.model_proto  # the rewrites below in memory, the file written once
    conv1d_as_conv2d(model.graph)
    plain_softplus(model.graph)
    strip_metadata(model.graph)
    onnx.save(model, str(path))


def strip_metadata(graph: Any) -> None:
    """Drop the exporter's metadata from every node of ``graph`` (the PyTorch source line,
    module and FX node of each: no part of the computation), in place."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def drop_unused_initializers(graph: Any) -> None:
    """Remove the initializers of ``graph`` that no node takes, in place."""
    used = {name for n in graph.node for name in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def conv1d_as_conv2d(graph: Any) -> int:
    """Rewrite every 1-d ``Conv`` of ``graph`` (its weight an initializer) as a 2-d
    one over a height of 1 (``Unsqueeze``, ``Conv``, ``Squeeze``), in place; returns how many.

    The same numbers, faster: onnxruntime has fast kernels for 2-d convolutions (its blocked
    NCHWc layout, as far as we can tell) and not for 1-d ones; a depthwise convolution of a few
    frames (each Mamba block's, 512 channels, kernel 4) took 80 us as 1-d and 2 us as 2-d.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    nodes, done = [], 0
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if weight is None or len(weight.dims) != 3 or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
            nodes.append(node)
            continue
        w2 = numpy_helper.from_array(
            numpy_helper.to_array(weight)[:, :, None, :], f"{weight.name}.as_2d"
        )  # (C_out, C_in / group, 1, K)
        if w2.name not in inits:
            graph.initializer.append(w2)
            inits[w2.name] = w2
        axes = f"{node.name}.axes_2"
        graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
        x2, y2 = f"{node.input[0]}.{node.name}.as_2d", f"{node.output[0]}.as_2d"
        new = {"group": attrs.get("group", 1)}
        for key, one in (("strides", 1), ("dilations", 1)):
            new[key] = [one, *attrs.get(key, [one])]
        if "kernel_shape" in attrs:
            new["kernel_shape"] = [1, *attrs["kernel_shape"]]
        begin, end = attrs.get("pads", [0, 0])
        new["pads"] = [0, begin, 0, end]
        nodes += [
            helper.make_node("Unsqueeze", [node.input[0], axes], [x2], name=f"{node.name}.in_2d"),
            helper.make_node("Conv", [x2, w2.name, *node.input[2:]], [y2], name=node.name, **new),
            helper.make_node("Squeeze", [y2, axes], [node.output[0]], name=f"{node.name}.out_2d"),
        ]
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unused_initializers(graph)
    return done


def plain_softplus(graph: Any) -> int:
    """Rewrite PyTorch's softplus (``Where(x > 20, x, Softplus(x))``, as the exporter writes
    it) in ``graph`` as ``Softplus(x)`` alone, in place; returns how many.

    The same numbers: onnxruntime's ``Softplus`` computes x + log1p(exp(-x)) for x > 0, which
    rounds to x in fp32 above a threshold of 16 or more (exp(-16) is under half an ulp of 16),
    as PyTorch's threshold gives; two nodes fewer per use (each Mamba block has one).
    """
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    drop, done = set(), 0
    for node in graph.node:
        if node.op_type != "Where" or len(node.input) != 3:
            continue
        cond, x, soft = (producer.get(name) for name in node.input)
        if (cond is None or soft is None or cond.op_type != "Greater"
                or soft.op_type != "Softplus" or soft.input[0] != node.input[1]
                or cond.input[0] != node.input[1] or uses[node.input[0]] != 1
                or uses[node.input[2]] != 1):  # fmt: skip
            continue
        threshold = consts.get(cond.input[1])
        if threshold is None or threshold.size != 1 or float(threshold) < 16.0:
            continue
        soft.output[0] = node.output[0]
        drop.update({id(node), id(cond)})
        done += 1
    if done:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
    return done


def _export_graphs(
    asr: nn.Module, folder: Path, chunk_frames: int | None, chunk_step: bool = True
) -> dict[str, Any]:
    """The graphs into ``folder`` (``encoder_chunk.onnx`` for chunks of ``chunk_frames``
    feature frames, unless None: from ``ChunkStep`` if ``chunk_step`` and the model is one it
    computes, else from the model's ``forward_chunk`` with the scan unrolled); returns the
    state layouts for config.json."""
    model = asr.model
    # the graphs' encoder state tensors: time first where the chunk graph is ChunkStep's
    fast = chunk_frames is not None and chunk_step and supports_chunk_step(model)
    enc_layout = _layout(lambda b: model.init_state(b), "state", time_first if fast else None)
    pred_layout = _layout(lambda b: model.predictor.init_state(b), "state")
    Dim = torch.export.Dim
    batch, time, hyps = Dim("batch", min=1), Dim("time", min=1), Dim("hyps", min=1)
    # examples of 2 (never 1: export would fix a dim of size 1), 3 encoder frames
    state = [time_first(t) if fast else t for _, t in state_leaves(model.init_state(2), "s")]
    feats = torch.randn(2, 3 * model.subsampling, asr.config.features.n_mels)
    _export_graph(
        EncoderChunk(model, time_first=fast).eval(), (feats, *state), folder / GRAPHS["encoder"],
        ["feats", *(s["name"] for s in enc_layout)],
        ["memory", "encoder_proj", *(s["name"].replace("state", "new_state", 1) for s in enc_layout)],
        ({0: batch, 1: time}, _dims(enc_layout, batch)),
    )  # fmt: skip
    if chunk_frames is not None:  # chunks up to chunk_frames, the scan unrolled: no Scan node
        steps = -(-chunk_frames // model.subsampling)  # encoder frames of a full chunk
        short = Dim("time", min=1, max=chunk_frames)
        module = ChunkStep(model, chunk_frames) if fast else EncoderChunk(model)
        with export_backend("unrolled", steps=steps):
            _export_graph(
                module.eval(), (feats[:, :chunk_frames], *state),
                folder / CHUNK_GRAPH,
                ["feats", *(s["name"] for s in enc_layout)],
                ["memory", "encoder_proj",
                 *(s["name"].replace("state", "new_state", 1) for s in enc_layout)],
                ({0: batch, 1: short}, _dims(enc_layout, batch)),
            )  # fmt: skip
    pstate = [t for _, t in state_leaves(model.predictor.init_state(2), "s")]
    tokens = torch.full((2, 1), 3, dtype=torch.long)
    _export_graph(
        PredictorStep(model).eval(), (tokens, *pstate), folder / GRAPHS["predictor"],
        ["tokens", *(s["name"] for s in pred_layout)],
        ["predictor_proj", *(s["name"].replace("state", "new_state", 1) for s in pred_layout)],
        ({0: hyps}, _dims(pred_layout, hyps)),
    )  # fmt: skip
    joiner_dim = model.joiner.out.in_features
    proj = torch.randn(2, joiner_dim)
    _export_graph(
        JoinerStep(model).eval(), (proj, proj.clone()), folder / GRAPHS["joiner"],
        ["encoder_proj", "predictor_proj"], ["logits"], ({0: hyps}, {0: hyps}),
    )  # fmt: skip
    return {"encoder_state": enc_layout, "predictor_state": pred_layout, "joiner_dim": joiner_dim,
            "encoder_state_layout": "time_first" if fast else "model",
            "encoder_chunk": None if chunk_frames is None
            else {"file": CHUNK_GRAPH, "frames": chunk_frames}}  # fmt: skip


# What the int8 graphs quantize: the matrix products (MatMul, and Gemm, which the tool turns
# into one), but not those that make the selective scan's step sizes (each Mamba block's
# x_proj and dt_proj: dt enters exp(dt A), where an int8 error is amplified; small matrices,
# so keeping them fp32 costs no speed). The convolutions stay fp32: quantized (onnxruntime's
# default) the encoder was no faster and the predictor 3x slower (docs/export.md#int8).
QUANTIZED_OPS = ["MatMul"]


def scan_step_weights(model: nn.Module) -> list[np.ndarray]:
    """The weights of every Mamba block's x_proj and dt_proj, as their MatMuls hold them
    (in, out): what the int8 graphs keep in fp32."""
    return [
        module.weight.detach().cpu().float().numpy().T
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in ("x_proj", "dt_proj") and isinstance(module, nn.Linear)
    ]


def pointwise_weights(model: nn.Module) -> list[np.ndarray]:
    """The weights of the front end's pointwise (1 x 1) convolutions as matrix products hold
    them, (in, out): ``ChunkStep`` computes them as MatMuls, which the int8 graphs keep in
    fp32, as the convolutions of the other graphs are."""
    return [
        module.weight.detach().cpu().float().numpy()[:, :, 0].T
        for name, module in model.named_modules()
        if name.endswith(".pointwise") and isinstance(module, nn.Conv1d)
        and module.kernel_size == (1,)
    ]  # fmt: skip


def _matmuls_with(path: Path, weights: list[np.ndarray]) -> list[str]:
    """The names of the MatMul nodes of the graph at ``path`` whose weight is one of
    ``weights`` (by shape, then value)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    shapes = {w.shape for w in weights}
    found = []
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is None or tuple(init.dims) not in shapes:
            continue
        value = numpy_helper.to_array(init)
        if any(w.shape == value.shape and np.array_equal(w, value) for w in weights):
            found.append(node.name)
    return found


def _quantize(folder: Path, keep_fp32: list[np.ndarray]) -> None:
    """``*.int8.onnx`` beside each graph: int8 weights of the matrix products (per tensor,
    signed) but those of ``keep_fp32``, activations quantized dynamically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process, on the root logger
    try:
        for name in [*GRAPHS.values(), CHUNK_GRAPH]:
            if not (folder / name).is_file():
                continue
            quantize_dynamic(
                folder / name, folder / int8_name(name), weight_type=QuantType.QInt8,
                op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=_matmuls_with(folder / name, keep_fp32),
            )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)


def _matmul_by(node: Any, x: str, weight: np.ndarray, bias: str | None, out: str,
               graph: Any) -> list[Any]:  # fmt: skip
    """``MatMul`` of ``x`` by ``weight`` (in, out), added to ``graph`` as an initializer, and
    ``Add`` of ``bias`` (an initializer's name, or None), writing ``out``; named after
    ``node``."""
    from onnx import helper, numpy_helper

    base = node.name or node.output[0]
    w_name = f"{base}.weight_io"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
    product = f"{out}.matmul" if bias else out
    nodes = [helper.make_node("MatMul", [x, w_name], [product], name=f"{base}.matmul")]
    if bias:
        nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{base}.bias"))
    return nodes


def _rewrite_nodes(graph: Any, rewrite: Any) -> int:
    """Replace each node of ``graph`` for which ``rewrite(node, attrs, inits)`` returns a list
    of nodes by that list, in place, and drop the initializers no node reads any more; returns
    how many were replaced."""
    from onnx import helper

    inits = {i.name: i for i in graph.initializer}
    nodes, done = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        new = rewrite(node, attrs, inits)
        nodes.extend([node] if new is None else new)
        done += new is not None
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return done


def _bias(node: Any) -> str | None:
    """The name of a Gemm's C or a Conv's B, None where it has none."""
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def gemm_as_matmul(graph: Any) -> int:
    """Rewrite every ``Gemm`` of ``graph`` whose B (and C) are initializers, alpha = beta = 1
    and A not transposed, as ``MatMul`` by the weight (stored as (in, out)) and ``Add`` of the
    bias, in place (the int4 quantizer takes MatMul only); returns how many."""
    from onnx import numpy_helper

    def rewrite(node: Any, attrs: dict[str, Any], inits: dict[str, Any]) -> list[Any] | None:
        bias = _bias(node)
        plain = (node.op_type == "Gemm" and attrs.get("alpha", 1.0) == 1.0
                 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
                 and node.input[1] in inits and (bias is None or bias in inits))  # fmt: skip
        if not plain:
            return None
        weight = numpy_helper.to_array(inits[node.input[1]])
        weight = weight.T if attrs.get("transB", 0) else weight
        return _matmul_by(node, node.input[0], weight, bias, node.output[0], graph)

    return _rewrite_nodes(graph, rewrite)


def pointwise_conv_as_matmul(graph: Any) -> int:
    """Rewrite every ``Conv`` of ``graph`` whose kernel is all ones (a pointwise convolution:
    one group, stride and dilation 1, no padding) and whose weight (and bias) are initializers
    as ``Transpose`` (channels last), ``MatMul`` by the weight stored as (in, out), ``Add`` of
    the bias and ``Transpose`` back, in place (the int4 quantizer takes MatMul only; the front
    end's pointwise convolutions are its largest weights); returns how many."""
    from onnx import helper, numpy_helper

    def rewrite(node: Any, attrs: dict[str, Any], inits: dict[str, Any]) -> list[Any] | None:
        if node.op_type != "Conv" or node.input[1] not in inits:
            return None
        weight, bias = numpy_helper.to_array(inits[node.input[1]]), _bias(node)
        plain = (weight.ndim >= 3 and all(k == 1 for k in weight.shape[2:])
                 and attrs.get("group", 1) == 1
                 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
                 and not any(attrs.get("pads", []))
                 and all(s == 1 for s in attrs.get("strides", [1]))
                 and all(d == 1 for d in attrs.get("dilations", [1]))
                 and (bias is None or bias in inits))  # fmt: skip
        if not plain:
            return None
        rank = weight.ndim  # the input's rank: (N, C, spatial...)
        base = node.name or node.output[0]
        x_last, y_last = f"{base}.channels_last", f"{base}.product"
        w = weight.reshape(weight.shape[0], weight.shape[1]).T  # (in, out)
        return [
            helper.make_node("Transpose", [node.input[0]], [x_last], perm=[0, *range(2, rank), 1],
                             name=f"{base}.transpose_in"),
            *_matmul_by(node, x_last, w, bias, y_last, graph),
            helper.make_node("Transpose", [y_last], [node.output[0]],
                             perm=[0, rank - 1, *range(1, rank - 1)], name=f"{base}.transpose_out"),
        ]  # fmt: skip

    return _rewrite_nodes(graph, rewrite)


# the nodes whose float weights the int4 graphs store in float16: the convolutions (depthwise;
# the pointwise ones are MatMulNBits, pointwise_conv_as_matmul), the embedding, the scales of the int4 blocks
# (MatMulNBits: onnxruntime folds the Cast and still pre-packs the weights) and the constants
# of products (Mul: the selective scan's A and D, the chunk graph's depthwise kernels, which
# the general graph's Conv holds in float16 too); the norms and the biases stay float32
FP16_OPS = ("Conv", "Gather", "MatMulNBits", "Mul")


def floats_as_fp16(graph: Any, ops: tuple[str, ...] = FP16_OPS, min_size: int = 64) -> int:
    """Store every float32 initializer of at least ``min_size`` values that only nodes of
    ``ops`` take as float16, with a ``Cast`` back to float32 in front of the graph
    (onnxruntime folds it when the session starts: the graph computes in float32 on the
    rounded values), in place; returns the bytes saved."""
    from onnx import TensorProto, helper, numpy_helper

    users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    casts, saved = [], 0
    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT or not users.get(init.name, {""}) <= set(ops):
            continue
        value = numpy_helper.to_array(init)
        if value.size < min_size:
            continue
        name = init.name
        half = numpy_helper.from_array(value.astype(np.float16), f"{name}.fp16")
        graph.initializer[i].CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                      name=f"{name}.cast"))  # fmt: skip
        saved += value.nbytes // 2
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return saved


def matmul_nbits(node: Any, layer: Any) -> tuple[Any, list[Any]]:
    """A ``MatMulNBits`` node (and its initializers) for a ``MatMul`` ``node`` by the folded
    int4 weight of ``layer`` (``mamba_asr.qat.QuantizedLayer`` with a ``block``): its integers
    q + 8 packed two a byte, low nibble first, (N, blocks, block / 2), and its signed scales
    (N * blocks,), as onnxruntime's quantizer writes them (no zero points: 8)."""
    from onnx import helper, numpy_helper

    q, block = layer.q, layer.block  # (N, K) in -8..7
    n, k = q.shape
    values = np.pad(q.astype(np.int16) + 8, ((0, 0), (0, -k % block)), constant_values=8)
    values = values.astype(np.uint8).reshape(n, -1, block // 2, 2)  # (N, blocks, block / 2, 2)
    packed = values[..., 0] | (values[..., 1] << 4)
    base = f"{node.name}.int4"
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(packed), f"{base}.q"),
        numpy_helper.from_array(layer.scale.astype(np.float32).reshape(-1), f"{base}.scale"),
    ]
    nbits = helper.make_node(
        "MatMulNBits", [node.input[0], f"{base}.q", f"{base}.scale"], list(node.output),
        name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
        accuracy_level=4,
    )  # fmt: skip
    return nbits, inits


def int4_qat_graph(graph: Any, layers: list[Any]) -> int:
    """Rewrite a graph exported from a folded int4 QAT model (``mamba_asr.qat.folded``) in
    place: each ``MatMul`` by the weight of a QAT layer (``gemm_as_matmul`` first) becomes
    ``matmul_nbits`` of its integers and scales, whose dequantized weight is the folded
    weight exactly; other weights stay float (the caller stores them in fp16). Returns how
    many it rewrote."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    nodes, added, done = [], [], 0
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        layer = None
        if init is not None:
            array = numpy_helper.to_array(init)
            layer = next((x for x in layers if x.weight.T.shape == array.shape
                          and np.array_equal(x.weight.T, array)), None)  # fmt: skip
        if layer is None:
            nodes.append(node)
            continue
        nbits, new = matmul_nbits(node, layer)
        nodes.append(nbits)
        added += new
        done += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unused_initializers(graph)
    return done


def _quantize_int4(
    folder: Path, block: int, layers: list[Any] | None = None, method: str = "rtn"
) -> None:
    """``*.int4.onnx`` beside each graph: every MatMul with a constant weight as
    ``MatMulNBits`` (int4, blocks of ``block`` input channels): method "rtn" rounds each
    weight to the nearest step of its block (symmetric, one scale a block), "hqq" is
    onnxruntime's Half-Quadratic Quantization (data-free: a scale and a float zero point a
    block, fitted to the block's weights); for a model of int4 QAT (``layers``: its folded
    int4 layers), the QAT layers' own integers and scales (``int4_qat_graph``), other matrix
    products' weights in fp16."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    # quiet: the quantizer logs a line per node it quantizes or skips
    with _quiet("onnxruntime.quantization.matmul_nbits_quantizer", logging.WARNING):
        for name in [*GRAPHS.values(), CHUNK_GRAPH]:
            if not (folder / name).is_file():
                continue
            model = onnx.load(str(folder / name))
            gemm_as_matmul(model.graph)
            pointwise_conv_as_matmul(model.graph)
            if layers is not None:
                int4_qat_graph(model.graph, layers)
                if not any(o.domain == "com.microsoft" for o in model.opset_import):
                    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
                floats_as_fp16(model.graph, (*FP16_OPS, "MatMul"))
                onnx.save(model, str(folder / quant_name(name, "int4")))
                continue
            if method == "hqq":
                config = nbits.HQQWeightOnlyQuantConfig(block_size=block, bits=4)
            else:
                config = nbits.DefaultWeightOnlyQuantConfig(
                    block_size=block, is_symmetric=True, accuracy_level=4
                )
            quantizer = nbits.MatMulNBitsQuantizer(
                model, block_size=block, is_symmetric=method == "rtn", accuracy_level=4,
                algo_config=config,
            )  # fmt: skip
            quantizer.process()
            model = quantizer.model.model
            floats_as_fp16(model.graph)
            onnx.save(model, str(folder / quant_name(name, "int4")))


QDQ_OPS = ("MatMul", "Gemm", "Conv", "Gather")


def _find_layer(node: Any, array: np.ndarray, layers: list[Any]) -> tuple[Any, np.ndarray, int]:
    """The QAT layer whose folded weight ``array`` (an initializer of ``node``) is, the int8
    values in the initializer's layout and their channel axis; (None, ...) if none is."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for layer in layers:
        w, q = layer.weight, layer.q
        if node.op_type == "MatMul" and layer.kind == "linear":
            views = [(w.T, q.T, 1)]
        elif node.op_type == "Gemm" and layer.kind == "linear":
            views = [(w, q, 0)] if attrs.get("transB", 0) else [(w.T, q.T, 1)]
        elif node.op_type == "Conv" and layer.kind == "conv1d":
            views = [(w, q, 0), (w[:, :, None, :], q[:, :, None, :], 0)]  # 1-d, or as 2-d
        elif node.op_type == "Gather" and layer.kind == "embedding":
            views = [(w, q, 0)]
        else:
            continue
        for wv, qv, axis in views:
            if wv.shape == array.shape and np.array_equal(wv, array):
                return layer, qv, axis
    return None, array, 0


def qdq_graph(graph: Any, layers: list[Any]) -> dict[str, int]:
    """Rewrite a graph exported from a folded QAT model (``mamba_asr.qat.folded``) in place:
    each weight of a QAT layer becomes its int8 values and per-channel scales with a
    ``DequantizeLinear``, and each input the layer quantized gets ``QuantizeLinear`` and
    ``DequantizeLinear`` with the learned scale and zero point (uint8; a ``Clip`` before
    keeps it to the quantizer's 0..127). onnxruntime runs the
    groups as integer kernels (``MatMulIntegerToFloat``, ``QLinearConv``). Returns how many
    weights and inputs it quantized."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    dq_of: dict[str, str] = {}  # float initializer -> its DequantizeLinear output
    added, nodes = [], []
    count = {"weights": 0, "inputs": 0}
    for node in graph.node:
        index = 0 if node.op_type == "Gather" else 1
        init = inits.get(node.input[index]) if node.op_type in QDQ_OPS else None
        if init is None or len(node.input) <= index:
            nodes.append(node)
            continue
        layer, q, axis = _find_layer(node, numpy_helper.to_array(init), layers)
        if layer is None:
            nodes.append(node)
            continue
        if init.name not in dq_of:
            base = f"{init.name}.qat"
            added += [
                numpy_helper.from_array(np.ascontiguousarray(q, np.int8), f"{base}.int8"),
                numpy_helper.from_array(layer.scale.astype(np.float32), f"{base}.scale"),
                numpy_helper.from_array(np.zeros(layer.scale.shape, np.int8), f"{base}.zero"),
            ]
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{base}.int8", f"{base}.scale", f"{base}.zero"],
                [f"{base}.dq"], name=f"{base}.dq", axis=axis,
            ))  # fmt: skip
            dq_of[init.name] = f"{base}.dq"
            count["weights"] += 1
        node.input[index] = dq_of[init.name]
        if layer.input_qparams is not None and node.op_type != "Gather":
            scale, zero_point = layer.input_qparams
            base = f"{node.name}.qat_input"
            low, high = ((q - zero_point) * np.float32(scale) for q in ACTIVATION_RANGE)
            added += [
                numpy_helper.from_array(np.array(scale, np.float32), f"{base}.scale"),
                numpy_helper.from_array(np.array(zero_point, np.uint8), f"{base}.zero"),
                numpy_helper.from_array(np.array(low, np.float32), f"{base}.low"),
                numpy_helper.from_array(np.array(high, np.float32), f"{base}.high"),
            ]
            nodes += [  # Clip: uint8 holds 0..255, the quantizer's range is 0..127
                helper.make_node("Clip", [node.input[0], f"{base}.low", f"{base}.high"],
                                 [f"{base}.clip"], name=f"{base}.clip"),
                helper.make_node("QuantizeLinear", [f"{base}.clip", f"{base}.scale",
                                 f"{base}.zero"], [f"{base}.q"], name=f"{base}.q"),
                helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale",
                                 f"{base}.zero"], [f"{base}.dq"], name=f"{base}.dq"),
            ]  # fmt: skip
            node.input[0] = f"{base}.dq"
            count["inputs"] += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    drop_unused_initializers(graph)
    return count


def _quantize_qat(folder: Path, layers: list[Any]) -> dict[str, dict[str, int]]:
    """``*.int8.onnx`` beside each graph of a folded QAT model: QDQ with the learned scales
    (``qdq_graph``); returns what each graph quantized."""
    import onnx

    counts = {}
    for name in [*GRAPHS.values(), CHUNK_GRAPH]:
        if not (folder / name).is_file():
            continue
        model = onnx.load(str(folder / name))
        counts[name] = qdq_graph(model.graph, layers)
        onnx.checker.check_model(model)
        onnx.save(model, str(folder / int8_name(name)))
    return counts


def _write_config(
    asr: nn.Module,
    folder: Path,
    graphs: dict[str, Any],
    int8: bool,
    qat: dict[str, Any] | None = None,
    int4_block: int | None = None,
    int4_method: str = "rtn",
) -> None:
    fbank, model = asr.fbank, asr.model
    int8_method = "qat" if qat and qat["quantized"] is not None else "dynamic"
    np.savez(
        folder / FEATURES_FILE,
        cmvn_mean=asr.cmvn.mean.detach().cpu().float().numpy(),
        cmvn_std=asr.cmvn.std.detach().cpu().float().numpy(),
        mel_fb=fbank.mel_fb.detach().cpu().float().numpy(),  # (K, M)
    )
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "mamba_asr_version": __version__,
        "opset": OPSET,
        "int8": int8,
        # how the int8 graphs were made: onnxruntime's dynamic quantization, or the QDQ
        # graphs of a quantization-aware trained model (its scheme, what each graph quantized)
        "int8_method": int8_method if int8 else None,
        "qat": qat,
        # int4 weights (*.int4.onnx): the block of input channels that shares a scale
        "int4": int4_block is not None,
        "int4_block": int4_block,
        "int4_method": int4_method if int4_block is not None else None,
        "features": {
            "sample_rate": asr.sample_rate,
            "n_mels": fbank.n_mels,
            "n_fft": fbank.n_fft,
            "win_length": fbank.win_length,
            "hop_length": fbank.hop_length,
            "log_floor": fbank.log_floor,
            "window": "hann-periodic",
            "center": False,
        },  # fmt: skip
        "model": {
            "kind": asr.config.model.kind,
            "vocab_size": model.vocab_size,
            "blank": model.blank,
            "subsampling": model.subsampling,
            "joiner_dim": graphs["joiner_dim"],
        },  # fmt: skip
        "encoder_state": graphs["encoder_state"],
        # "time_first": each encoder state tensor is the model's transposed (chunk_step)
        "encoder_state_layout": graphs["encoder_state_layout"],
        "predictor_state": graphs["predictor_state"],
        "encoder_chunk": graphs["encoder_chunk"],
        "lm": LM_FILE if (folder / LM_FILE).is_file() else None,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def int4_qat_block(asr: nn.Module) -> int:
    """The block of an ``int4-weights`` QAT model, ``INT4_BLOCK`` for any other model."""
    if qat_scheme(asr) != "int4-weights":
        return INT4_BLOCK
    from mamba_asr.qat import int4_block

    return int4_block(asr)


def export_onnx(
    asr: nn.Module,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    lm: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    chunk_ms: float | None = STREAM_CHUNK_MS,
    int4: bool = False,
    int4_block: int | None = None,
    int4_method: str = "rtn",
) -> Path:
    """Export ``asr`` (an ``ASR`` bundle of a streaming transducer) to the folder ``out``.

    lm: an n-gram LM file to ship beside the graphs (the bundled model's, for ``lm="auto"``);
    int8: add the dynamically quantized graphs; int4: add graphs of int4 weights, in blocks
    of ``int4_block`` input channels (None: the block an int4 QAT model was trained with,
    else ``INT4_BLOCK``), by ``int4_method`` ("rtn": rounded to the nearest step, symmetric;
    "hqq": Half-Quadratic Quantization with zero points, for models without int4 QAT, whose
    own integers are exported as they are); chunk_ms: the chunk length of
    ``encoder_chunk.onnx`` (None: no such graph, ``encoder.onnx`` takes every chunk). Raises a one-line ``ValueError`` for a model
    that does not stream or an ``out`` that exists (unless ``overwrite``) or cannot be made;
    on any error nothing is left at ``out``.
    """
    check_exportable(asr)
    missing = [
        m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'mamba-asr[export]'"
        )
    if lm is not None and not Path(lm).is_file():
        raise ValueError(f"{lm}: no such LM file")
    if int4_block is None:
        int4_block = int4_qat_block(asr)
    if int4_method not in INT4_METHODS:
        raise ValueError(f"int4 method {int4_method!r}: choose one of {', '.join(INT4_METHODS)}")
    if int4_method != "rtn" and not int4:
        raise ValueError(f"int4 method {int4_method} needs the int4 graphs (--int4)")
    if int4 and int4_method != "rtn" and qat_scheme(asr) == "int4-weights":
        raise ValueError(
            f"int4 method {int4_method}: a model of int4 QAT exports the integers it was "
            "trained with (rtn)"
        )
    if int4 and int4_block not in INT4_BLOCKS:
        raise ValueError(
            f"int4 block {int4_block}: choose one of {', '.join(map(str, INT4_BLOCKS))}"
        )
    chunk_frames = None if chunk_ms is None else stream_chunk_frames(asr, chunk_ms)
    out = check_output(out, "--out", overwrite=overwrite, folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's private one
    try:
        scheme, layers = qat_scheme(asr), None
        if scheme is not None:  # the quantized weights, as plain weights, without quantizers
            asr, layers = folded(asr)
        int4_layers = [x for x in layers or [] if x.block is not None]
        int8_layers = [x for x in layers or [] if x.block is None]
        if int4 and int4_layers and int4_layers[0].block != int4_block:
            raise ValueError(
                f"int4 block {int4_block}: the model was trained for {int4_layers[0].block}"
            )
        was_training = asr.training
        asr.eval()
        try:
            with torch.no_grad():
                # an int8 QAT model's chunk graph keeps forward_chunk's convolutions, whose
                # inputs the QDQ graphs quantize as the model does (qdq_graph)
                graphs = _export_graphs(asr, tmp, chunk_frames, chunk_step=not int8_layers)
        finally:
            asr.train(was_training)
        qat = None
        if layers is not None:
            quantized = _quantize_qat(tmp, int8_layers) if int8 and int8_layers else None
            qat = {"scheme": scheme, "quantized": quantized}
        if int8 and not int8_layers:
            _quantize(tmp, scan_step_weights(asr.model) + pointwise_weights(asr.model))
        if int4:
            _quantize_int4(tmp, int4_block, int4_layers or None, int4_method)
        asr.tokenizer.save(tmp / TOKENIZER_DIR)
        if lm is not None:
            shutil.copyfile(lm, tmp / LM_FILE)
        _write_config(asr, tmp, graphs, int8, qat, int4_block if int4 else None,
                      int4_method)  # fmt: skip
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
