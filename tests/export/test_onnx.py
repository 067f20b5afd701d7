"""ONNX export of a streaming transducer and the onnxruntime recognizer: equal to PyTorch.

A tiny random transducer (``helpers.recipes.tiny_recipe("transducer")``) with fitted-looking
CMVN statistics and a joiner that emits text is exported once per module; the encoder chunk
(the general graph, and the graph for 320 ms chunks with the scan unrolled) equals ``forward_chunk``
within 1e-4, and the ONNX recognizer's transcripts equal PyTorch's token for token, offline
and streaming, greedy and beam search with an n-gram LM, across endpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.int4 import dequantized_int4
from helpers.recipes import tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.export.onnx import export_onnx, state_leaves
from mamba_asr.export.onnx import onnx_state as export_state
from mamba_asr.lm.ngram import NgramLM, tokenizer_fingerprint
from mamba_asr.models.streaming import map_state
from mamba_asr.runtime.onnx import OnnxASR
from mamba_asr.text.tokenizer import CharTokenizer
from mamba_asr.transcription import transcribe_waveform

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    asr = ASR.from_recipe(tiny_recipe("transducer"), CharTokenizer("AB ")).eval()
    with torch.no_grad():
        asr.cmvn.mean.copy_(torch.randn(asr.cmvn.mean.shape) - 8.0)
        asr.cmvn.std.copy_(torch.rand(asr.cmvn.std.shape) + 2.0)
        asr.cmvn.frames.fill_(100)
        asr.model.joiner.out.bias[1:3] = -30.0  # no bos/eos, which decode to nothing
        asr.model.joiner.out.bias[0] -= 1.0  # fewer blanks: text in every segment
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    rng = np.random.default_rng(0)
    sentences = [rng.integers(3, 6, size=rng.integers(1, 12)).tolist() for _ in range(200)]
    fingerprint = tokenizer_fingerprint(asr.tokenizer, asr.tokenizer.vocab_size)
    lm = NgramLM.train(sentences, asr.tokenizer.vocab_size, order=3, fingerprint=fingerprint)
    lm_path = folder.parent / "lm.npz"
    lm.save(lm_path)
    export_onnx(asr, folder, lm=lm_path, int8=True, int4=True)
    asr.shipped_lm = str(lm_path)
    return asr, folder


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(3 * t)) * t)
    wave[int(0.4 * wave.size) : int(0.6 * wave.size)] *= 0.01
    return (wave + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_export_writes_graphs_tokenizer_features_and_config(tiny):
    _, folder = tiny
    names = {p.name for p in folder.iterdir()}
    graphs = {"encoder", "predictor", "joiner"}
    assert {f"{g}.onnx" for g in graphs} | {f"{g}.int8.onnx" for g in graphs} <= names
    assert {"config.json", "features.npz", "lm.npz", "tokenizer"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["opset"] >= 18 and config["features"]["n_mels"] == 80
    assert config["model"]["subsampling"] == 8 and config["lm"] == "lm.npz"


def test_int8_quantizes_matrix_products_but_the_scan_step_sizes(tiny):
    import onnx

    _, folder = tiny
    ops = [n.op_type for n in onnx.load(str(folder / "encoder.int8.onnx")).graph.node]
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert "ConvInteger" not in ops and "Conv" in ops
    assert ops.count("MatMul") == 2  # the one Mamba block's x_proj and dt_proj, fp32


@pytest.mark.parametrize("frames", [1, 8, 13, 32])
def test_encoder_chunks_equal_forward_chunk(tiny, frames):
    asr, folder = tiny
    model = OnnxASR.load(folder).model
    feats = torch.randn(2, 3 * frames, 80)
    state = asr.model.init_state(2)
    onnx_state = model.init_state(2)
    for i in range(3):  # three chunks in a row: the state goes through
        chunk = feats[:, i * frames : (i + 1) * frames]
        with torch.no_grad():
            memory, state = asr.model.forward_chunk(chunk, state)
        got, _, onnx_state = model.encode(chunk.numpy(), onnx_state)
        np.testing.assert_allclose(got, memory.numpy(), atol=1e-4, rtol=0)
        config = json.loads((folder / "config.json").read_text())
        for expected, new in zip(export_state(state, config), onnx_state, strict=True):
            np.testing.assert_allclose(new, expected, atol=1e-4, rtol=0)


def test_the_state_tensors_are_time_first(tiny):
    """The chunk graph is ChunkStep's, so both encoder graphs take the state time first: the
    model's tensors transposed, as config.json says."""
    asr, folder = tiny
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder_state_layout"] == "time_first"
    leaves = state_leaves(asr.model.init_state(1), "state")
    for spec, (name, t) in zip(config["encoder_state"], leaves, strict=True):
        assert spec["name"] == name and spec["shape"] == [1, t.shape[2], t.shape[1]]


def test_the_chunk_graph_has_no_scan(tiny):
    import onnx

    _, folder = tiny
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder_chunk"] == {"file": "encoder_chunk.onnx", "frames": 32}
    for name in ("encoder_chunk.onnx", "encoder_chunk.int8.onnx"):
        graph = onnx.load(str(folder / name)).graph
        assert not {"Scan", "Loop"} & {n.op_type for n in graph.node}
    general = onnx.load(str(folder / "encoder.onnx")).graph
    assert "Scan" in {n.op_type for n in general.node}


def test_the_chunk_graph_is_laid_out_time_first(tiny):
    """The chunk graph (``ChunkStep``): no convolution and no ``Transpose``, softplus in
    vectorized kernels, and in int8 the front end's pointwise products and each Mamba
    block's x_proj and dt_proj (and its y = C h) in fp32. The general graph's softplus is one
    node (``plain_softplus``)."""
    import onnx

    asr, folder = tiny
    graph = onnx.load(str(folder / "encoder_chunk.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert not {"Conv", "Transpose", "Where", "Softplus"} & set(ops)
    general = [n.op_type for n in onnx.load(str(folder / "encoder.onnx")).graph.node]
    assert "Where" not in general
    assert general.count("Softplus") == len(asr.model.encoder.layers)
    int8 = [n.op_type for n in onnx.load(str(folder / "encoder_chunk.int8.onnx")).graph.node]
    n_layers, n_stages = len(asr.model.encoder.layers), len(asr.model.frontend.stages)
    assert int8.count("MatMul") == 3 * n_layers + n_stages


@pytest.mark.parametrize("name", ["encoder", "predictor"])
def test_convolutions_are_two_dimensional(tiny, name):
    """1-d convolutions are written as 2-d ones over a height of 1 (onnxruntime's fast
    kernels); the equality tests check the numbers. (The chunk graph has none.)"""
    import onnx
    from onnx import numpy_helper

    _, folder = tiny
    graph = onnx.load(str(folder / f"{name}.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(inits[n.input[1]].ndim == 4 for n in convs)


@pytest.mark.parametrize(("batch", "frames"), [(1, 32), (2, 32), (2, 24), (1, 13), (2, 1)])
def test_the_chunk_graph_equals_forward_chunk_and_the_scan_graph(tiny, batch, frames):
    """Fresh random chunks and a random start state, three chunks in a row, full (32 frames)
    or shorter: the unrolled chunk graph gives forward_chunk's memory and states, and the
    Scan graph's."""
    asr, folder = tiny
    model = OnnxASR.load(folder).model
    assert model.chunk_encoder is not None and model.chunk_frames == 32
    gen = torch.Generator().manual_seed(batch)
    state = map_state(  # a state from somewhere inside a stream, not zeros
        lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype), asr.model.init_state(batch)
    )
    config = json.loads((folder / "config.json").read_text())
    leaves = export_state(state, config)
    chunk_state, scan_state = leaves, leaves
    for _ in range(3):
        chunk = torch.randn(batch, frames, 80, generator=gen)
        with torch.no_grad():
            memory, state = asr.model.forward_chunk(chunk, state)
        feeds = dict(zip(model.enc_names, chunk_state, strict=True))
        got = model.chunk_encoder.run(None, {"feats": chunk.numpy(), **feeds})
        feeds = dict(zip(model.enc_names, scan_state, strict=True))
        ref = model.encoder.run(None, {"feats": chunk.numpy(), **feeds})
        np.testing.assert_allclose(got[0], memory.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[0], ref[0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1], ref[1], atol=1e-4, rtol=0)
        for expected, new, other in zip(export_state(state, config), got[2:], ref[2:],
                                        strict=True):  # fmt: skip
            np.testing.assert_allclose(new, expected, atol=1e-4, rtol=0)
            np.testing.assert_allclose(new, other, atol=1e-4, rtol=0)
        chunk_state, scan_state = got[2:], ref[2:]


OPTIONS = {
    "greedy": DecodingOptions(strategy="greedy"),
    "beam": DecodingOptions(beam_size=4, lm=None),
    "beam_lm": DecodingOptions(beam_size=4),  # lm="auto": the exported LM
}


@pytest.mark.parametrize("chunk_ms", [None, 320.0])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_transcripts_equal_pytorch_token_for_token(tiny, name, chunk_ms):
    asr, folder = tiny
    onnx = OnnxASR.load(folder)
    wave = speech_like(4.0)
    endpoint = EndpointConfig(silence_after_speech=0.3, max_segment=1.5)  # several segments
    options = OPTIONS[name]
    expected = transcribe_waveform(asr, wave, 16000, options, chunk_ms=chunk_ms, endpoint=endpoint)
    got = onnx.transcribe_waveform(wave, 16000, options, chunk_ms=chunk_ms, endpoint=endpoint)
    assert len(expected.segments) > 1 and expected.text
    assert got.to_dict() == expected.to_dict()


def test_int8_graphs_decode(tiny):
    _, folder = tiny
    got = OnnxASR.load(folder, int8=True).transcribe_waveform(speech_like(1.0), 16000)
    assert got.duration == pytest.approx(1.0)


def product_weights(graph) -> list[np.ndarray]:
    """The constant weights of a fp32 graph's matrix products (MatMul, Gemm, pointwise Conv),
    each (in, out) as MatMulNBits holds them."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = []
    for n in graph.node:
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits:
            transposed = any(a.name == "transB" and a.i for a in n.attribute)
            weights.append(inits[n.input[1]].T if transposed else inits[n.input[1]])
        pointwise = (
            n.op_type == "Conv"
            and n.input[1] in inits
            and not any(a.name == "group" and a.i > 1 for a in n.attribute)
        )
        if pointwise and all(k == 1 for k in inits[n.input[1]].shape[2:]):
            w = inits[n.input[1]]
            weights.append(w.reshape(w.shape[0], w.shape[1]).T)
    return weights


@pytest.mark.parametrize("name", ["encoder", "encoder_chunk", "predictor", "joiner"])
def test_int4_graphs_hold_every_weight_in_blocks_of_int4(tiny, name):
    """Every matrix product with a weight (the joiner's and predictor's Gemm and the front
    end's pointwise Conv too) becomes MatMulNBits; its weight is the fp32 weight rounded per block of 32 input channels to
    scale * q, q in -8..7, |scale| = the block's largest magnitude / 8 (onnxruntime's
    symmetric scheme: that value is q = -8): within half a step, one at the clipped end."""
    import onnx
    from onnx import numpy_helper

    _, folder = tiny
    config = json.loads((folder / "config.json").read_text())
    assert config["int4"] and config["int4_block"] == 32
    fp32 = onnx.load(str(folder / f"{name}.onnx")).graph
    int4 = onnx.load(str(folder / f"{name}.int4.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in fp32.initializer}
    weights = product_weights(fp32)
    if name == "encoder":
        assert len(weights) > len(
            [n for n in fp32.node if n.op_type == "MatMul" and n.input[1] in inits]
        )  # the pointwise convolutions are among them
    quantized = dequantized_int4(int4)
    assert weights and len(quantized) == len(weights)
    ops = [n.op_type for n in int4.node]
    assert "Gemm" not in ops
    int4_inits = {i.name for i in int4.initializer}
    assert not [n for n in int4.node if n.op_type == "MatMul" and n.input[1] in int4_inits]
    for w in quantized.values():
        candidates = [v for v in weights if v.shape == w.shape]
        assert candidates
        errors = []
        for v in candidates:
            blocks = np.abs(np.pad(v, ((0, -v.shape[0] % 32), (0, 0)))).reshape(-1, 32, v.shape[1])
            step = np.repeat(blocks.max(axis=1) / 8.0, 32, axis=0)[: v.shape[0]]
            error = np.abs(w - v) / np.maximum(step, 1e-12)
            inner = np.abs(v) <= 7.5 * step  # +8 steps would be q = 8: clipped to 7
            errors.append(max(np.max(error[inner], initial=0.0) / 0.5, np.max(error)))
        assert min(errors) <= 1.0 + 1e-3  # rounded to the nearest step of its block


def test_int4_graphs_keep_big_float_weights_in_fp16(tiny):
    """The front end's convolutions, the embedding, the scales of the int4 blocks and the
    scan's A (of at least 64 values): float16 initializers and a Cast; the biases and norms
    stay float32."""
    import onnx

    _, folder = tiny
    graph = onnx.load(str(folder / "encoder.int4.onnx")).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    casts = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Cast"}
    assert halves and all(i.name in casts for i in halves)
    scales = {n.input[2] for n in graph.node if n.op_type == "MatMulNBits"}
    assert scales & set(casts.values())  # a scale read through its Cast
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    assert all(sizes[s] < 64 for s in scales if s in sizes)  # fp32 ones: the small ones
    products = {i for n in graph.node if n.op_type == "Mul" for i in n.input}
    assert products & set(casts.values())  # A, D
    norms = {n.input[1] for n in graph.node if n.op_type == "LayerNormalization"}
    assert norms and not norms & set(casts.values())


def test_int4_graphs_decode_close_to_fp32(tiny):
    """The int4 chunk graph's memory stays near the fp32 graph's (weights rounded to 4 bits,
    activations to 8 within a product) and the recognizer runs on the int4 graphs."""
    assert_int4_close_to_fp32(tiny[1])


def assert_int4_close_to_fp32(folder) -> None:
    """The int4 encoder's output within 20% (relative norm) of the fp32 graph's on random
    features, and a transcription on the int4 graphs."""
    fp32 = OnnxASR.load(folder).model
    int4 = OnnxASR.load(folder, int4=True).model
    feats = torch.randn(2, 32, 80, generator=torch.Generator().manual_seed(3)).numpy()
    ref, _, _ = fp32.encode(feats, fp32.init_state(2))
    got, _, _ = int4.encode(feats, int4.init_state(2))
    assert np.linalg.norm(got - ref) <= 0.2 * np.linalg.norm(ref)
    text = OnnxASR.load(folder, int4=True).transcribe_waveform(speech_like(1.0), 16000)
    assert text.duration == pytest.approx(1.0)


def test_int4_hqq_graphs_fit_each_block_with_a_zero_point(tiny, tmp_path):
    """--int4-method hqq: every weight the rtn graphs hold as int4 is int4 here too, with a
    float zero point a block; the weights are within a step of their block of the fp32 ones
    and closer overall than a step's quarter, and the recognizer runs on them."""
    import onnx

    asr, folder = tiny
    out = export_onnx(asr, tmp_path / "hqq", int4=True, int4_method="hqq", chunk_ms=None)
    config = json.loads((out / "config.json").read_text())
    assert config["int4_method"] == "hqq" and config["int4_block"] == 32
    assert json.loads((folder / "config.json").read_text())["int4_method"] == "rtn"
    for name in ("encoder", "predictor", "joiner"):
        rtn = dequantized_int4(onnx.load(str(folder / f"{name}.int4.onnx")).graph)
        graph = onnx.load(str(out / f"{name}.int4.onnx")).graph
        assert all(len(n.input) == 4 for n in graph.node if n.op_type == "MatMulNBits")
        hqq = dequantized_int4(graph)
        assert sorted(w.shape for w in hqq.values()) == sorted(w.shape for w in rtn.values())
        weights = product_weights(onnx.load(str(out / f"{name}.onnx")).graph)
        for w in hqq.values():
            # the fp32 weight it stands for: the one of its shape it is closest to
            ref = min((v for v in weights if v.shape == w.shape),
                      key=lambda v: np.abs(w - v).max())  # fmt: skip
            blocks = np.abs(np.pad(ref, ((0, -ref.shape[0] % 32), (0, 0))))
            step = np.repeat(blocks.reshape(-1, 32, ref.shape[1]).max(axis=1) / 7.5, 32, axis=0)
            step = np.maximum(step[: ref.shape[0]], 1e-12)  # 15 steps over the block's range
            assert np.max(np.abs(w - ref) / step) <= 1.0
            assert np.sqrt(np.mean(((w - ref) / step) ** 2)) <= 0.35
    assert_int4_close_to_fp32(out)


def test_int4_method_is_checked(tiny, tmp_path, capsys):
    from mamba_asr.cli import main

    asr, _ = tiny
    with pytest.raises(ValueError, match="int4 method 'gptq': choose one of rtn, hqq"):
        export_onnx(asr, tmp_path / "x", int4=True, int4_method="gptq")
    with pytest.raises(ValueError, match=r"int4 method hqq needs the int4 graphs \(--int4\)"):
        export_onnx(asr, tmp_path / "x", int4_method="hqq")
    model = asr.save(tmp_path / "m.pt")
    assert main(["export", "onnx", str(model), "--out", str(tmp_path / "x"),
                 "--int4-method", "hqq"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err == "mamba-asr: error: int4 method hqq needs the int4 graphs (--int4)"
    assert not (tmp_path / "x").exists()


def test_int4_and_int8_are_one_choice(tiny):
    _, folder = tiny
    with pytest.raises(ValueError, match="one of int8 and int4"):
        OnnxASR.load(folder, int8=True, int4=True)


def test_int4_block_must_be_a_supported_size(tiny, tmp_path):
    asr, _ = tiny
    with pytest.raises(ValueError, match="int4 block 48: choose one of 16, 32"):
        export_onnx(asr, tmp_path / "x", int4=True, int4_block=48)
    assert not (tmp_path / "x").exists()


def test_gemm_as_matmul_computes_the_same():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mamba_asr.export.onnx import gemm_as_matmul

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((3, 7)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]

    before = run(model)
    assert gemm_as_matmul(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    np.testing.assert_allclose(run(model), before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(before, x @ w.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial", [(9,), (1, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_as_matmul_computes_the_same(spatial, bias):
    """A pointwise Conv (1-d, and 2-d as torch exports a Conv1d) becomes Transpose, MatMul,
    (Add,) Transpose with the same outputs; other convolutions are left alone."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mamba_asr.export.onnx import pointwise_conv_as_matmul

    rng = np.random.default_rng(len(spatial) + 2 * bias)
    kernel = (1,) * len(spatial)
    w = rng.standard_normal((5, 7, *kernel)).astype(np.float32)
    depthwise = rng.standard_normal((5, 1, *(1,) * (len(spatial) - 1), 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(depthwise, "d")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"))
        inputs.append("b")
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["h"], name="pw", kernel_shape=list(kernel)),
         helper.make_node("Conv", ["h", "d"], ["y"], name="dw", group=5)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 7, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((2, 7, *spatial)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]

    before = run(model)
    assert pointwise_conv_as_matmul(model.graph) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Transpose", "MatMul", *(["Add"] * bias), "Transpose", "Conv"]
    assert "w" not in {i.name for i in model.graph.initializer}
    np.testing.assert_allclose(run(model), before, rtol=1e-5, atol=1e-5)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.runtime.onnx import OnnxASR
asr = OnnxASR.load(sys.argv[1])
for strategy in ("greedy", "beam"):
    print(asr.transcribe_file(sys.argv[2], DecodingOptions(strategy=strategy)).to_json())
print(asr.transcribe_file(sys.argv[2], chunk_ms=320).to_json())
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m])
import mamba_asr
assert mamba_asr.__file__.startswith(sys.argv[3]), mamba_asr.__file__  # not src/
"""


ROOT = Path(__file__).resolve().parents[2]


def light_package(out: Path) -> Path:
    """The modules that the light distribution (packages/mamba-asr-onnx, its setup.py's
    ``MODULES``) ships, copied from src/ into ``out`` as installing its wheel lays them out."""
    import ast
    import shutil

    tree = ast.parse((ROOT / "packages/mamba-asr-onnx/setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MODULES")
    for package, modules in ast.literal_eval(node.value).items():
        folder = Path(*package.split("."))
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name in modules:
            shutil.copyfile(ROOT / "src" / folder / f"{name}.py", out / folder / f"{name}.py")
    return out


def test_the_onnx_recognizer_runs_without_torch(tiny, tmp_path):
    """From the light distribution's modules alone, with torch unimportable."""
    import os
    import subprocess
    import sys

    import soundfile as sf

    from mamba_asr.transcription import transcribe_file

    asr, folder = tiny
    audio = tmp_path / "speech.wav"
    sf.write(audio, speech_like(3.0, seed=1), 16000)
    env = {**os.environ, "PYTHONPATH": str(light_package(tmp_path / "site"))}
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(folder), str(audio), str(tmp_path / "site")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    expected = [
        transcribe_file(asr, audio, DecodingOptions(strategy="greedy")).to_json(),
        transcribe_file(asr, audio, DecodingOptions(strategy="beam")).to_json(),
        transcribe_file(asr, audio, chunk_ms=320).to_json(),
    ]
    assert lines == expected
    assert json.loads(lines[0])["text"]


def test_a_model_that_does_not_stream_is_refused(tmp_path):
    asr = ASR.from_recipe(tiny_recipe("ctc"), CharTokenizer("AB "))
    with pytest.raises(ValueError, match="streaming transducer") as err:
        export_onnx(asr, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_or_unwritable_out_is_refused(tiny, tmp_path):
    asr, folder = tiny
    with pytest.raises(FileExistsError, match="already exists") as err:
        export_onnx(asr, folder)
    assert "\n" not in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises((ValueError, OSError)):
        export_onnx(asr, tmp_path / "file" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    import mamba_asr.export.onnx as export

    asr, _ = tiny
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("kept")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_config", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(asr, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.txt", "out"]


def test_transcribe_onnx_refuses_model_options(tmp_path, capsys):
    from mamba_asr.cli import main

    args = ["transcribe", str(tmp_path / "a.wav"), "--onnx", str(tmp_path)]
    assert main([*args, "--model", "x.pt"]) == 2
    assert "--onnx DIR holds the model" in capsys.readouterr().err
    assert main(args) == 2
    assert "not an ONNX export" in capsys.readouterr().err


def test_the_server_serves_an_export_as_it_transcribes_alone(tiny):
    """``mamba-asr serve --onnx``: a WebSocket stream and an upload give the export's own
    transcript."""
    pytest.importorskip("uvicorn", reason='the server needs pip install "mamba-asr[serve]"')
    pytest.importorskip("websockets", reason='the server needs pip install "mamba-asr[serve]"')
    import io
    import urllib.request

    import soundfile as sf

    from helpers.server import multipart, running_server, stream_file
    from mamba_asr.serve.engine import Engine

    _, folder = tiny
    onnx_asr, wave = OnnxASR.load(folder), speech_like(3.0, seed=5)
    options = DecodingOptions("greedy")
    alone = onnx_asr.transcribe_waveform(wave, 16000, options)
    assert alone.text  # the comparisons below compare something
    with running_server(Engine(onnx_asr, "tiny-onnx", options)) as url:
        messages, code, _ = stream_file(url, wave, 16000, fmt="float32")
        assert code == 1000 and messages[-1]["text"] == alone.text
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format="FLAC")
        body, ctype = multipart(buf.getvalue())
        headers = {"Content-Type": ctype}
        req = urllib.request.Request(url + "/v1/audio/transcriptions", body, headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["text"] == alone.text


def eval_set(folder: Path) -> Path:
    """Three utterances of speech-like sound (lengths 1.3-2.9 s) and their manifest."""
    import soundfile as sf

    folder.mkdir()
    lines = []
    for i, seconds in enumerate((2.9, 1.3, 2.1)):
        sf.write(folder / f"u{i}.wav", speech_like(seconds, seed=i), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": "AB A",
                                 "duration": seconds}))  # fmt: skip
    (folder / "all.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "all.jsonl"


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_eval_onnx_gives_what_pytorch_gives(tiny, tmp_path, capsys, stream):
    from mamba_asr.cli import main

    asr, folder = tiny
    model = tmp_path / "model.pt"
    asr.save(model)
    manifest = eval_set(tmp_path / "dev")
    common = [str(manifest), "--strategy", "greedy", "--json", *stream]  # beam: tests above
    outs = []
    for engine in (["--model", str(model)], ["--onnx", str(folder)]):
        hyps = tmp_path / f"h{len(outs)}.jsonl"
        assert main(["eval", *common, *engine, "--hyps", str(hyps)]) == 0
        result = json.loads(capsys.readouterr().out.splitlines()[-1])
        outs.append((result["wer"], result["cer"], result["utterances"], hyps.read_text()))
    assert outs[0] == outs[1]
    assert any(json.loads(line)["hyp"] for line in outs[0][3].splitlines())


def test_eval_onnx_writes_hypotheses_in_the_export_folder(tiny, tmp_path, capsys):
    from mamba_asr.cli import main
    from mamba_asr.evaluate import hypotheses_name

    _, folder = tiny
    manifest = eval_set(tmp_path / "dev")
    args = ["eval", str(manifest), "--onnx", str(folder), "--strategy", "greedy"]
    try:
        assert main([*args, "--int8", "--stream", "--chunk-ms", "640"]) == 0
        hyps = folder / hypotheses_name(manifest, "stream", "int8")
        assert hyps.name.endswith("-stream-int8.jsonl") and hyps.is_file()
        assert f"hypotheses: {hyps}" in capsys.readouterr().out
        assert main([*args, "--int4"]) == 0
        assert (folder / hypotheses_name(manifest, "int4")).is_file()
        capsys.readouterr()
    finally:
        for path in folder.glob("hyps-*.jsonl"):
            path.unlink()
    assert main([*args, "--chunk-ms", "640"]) == 2
    assert "--chunk-ms applies to --stream only" in capsys.readouterr().err
    assert main([*args, "--int4", "--int8"]) == 2
    assert "choose one of int8 and int4" in capsys.readouterr().err
    assert main(["eval", str(manifest), "--int4"]) == 2
    assert "--int4 applies to --onnx only" in capsys.readouterr().err
    assert main([*args, "--stream", "--chunk-ms", "10"]) == 2
    assert "chunk_ms must be at least 80" in capsys.readouterr().err
    assert not list(folder.glob("hyps-*.jsonl"))
