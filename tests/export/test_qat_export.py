"""The int8 exports of a quantization-aware trained model compute what its fake-quantized
PyTorch model computes.

ONNX (``export_onnx(int8=True)`` of a QAT model: QDQ graphs with the learned scales): the int8
encoder's memory equals the fake-quantized PyTorch model's within 1e-4 (measured: 5e-7; a
rounding that flips by one step would show as about 1e-2), onnxruntime runs integer kernels,
and the transcripts are the same. Core ML (``--weights int8``): a prediction needs macOS, so
the saved package's spec is read: its int8 weights are the QAT model's integers exactly and
the scales its scales in fp16.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.int4 import dequantized_int4
from helpers.recipes import tiny_asr
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.export.onnx import export_onnx, state_leaves
from mamba_asr.transcription import transcribe_waveform

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mamba_asr.qat import folded, prepare_qat  # noqa: E402

TOLERANCE = 1e-4


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(3 * t + seed)) * t)
    wave[int(0.4 * wave.size) : int(0.5 * wave.size)] *= 0.01
    return (wave + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def qat_model(scheme: str, *more: str, block: int = 32):
    """A tiny transducer that emits text, prepared for QAT (``block``: of int4-weights), its
    activation ranges observed on a few utterances, in eval mode."""
    torch.manual_seed(0)
    asr = tiny_asr("transducer", *more, blank_bias=0.0)
    with torch.no_grad():
        asr.cmvn.mean.copy_(torch.randn(asr.cmvn.mean.shape) - 8.0)
        asr.cmvn.std.copy_(torch.rand(asr.cmvn.std.shape) + 2.0)
        asr.model.joiner.out.bias[1:3] = -30.0
    prepare_qat(asr, scheme, block).train()
    waves = torch.from_numpy(np.stack([speech_like(1.5, s) for s in range(4)]))
    lengths = torch.full((4,), waves.shape[1])
    with torch.no_grad():
        memory = asr.model.encode(*asr.features(waves, lengths)).memory
        pred, _ = asr.model.predictor(torch.randint(3, 6, (4, 6)))
        asr.model.joiner(memory[:, :, None], pred[:, None])
    return asr.eval()


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    asr = qat_model("int8")
    folder = tmp_path_factory.mktemp("onnx") / "qat"
    export_onnx(asr, folder, int8=True, chunk_ms=None)  # encoder.onnx takes every chunk
    return asr, folder


def test_the_int8_graphs_are_qdq_with_the_learned_scales(onnx_export):
    import onnx

    asr, folder = onnx_export
    config = json.loads((folder / "config.json").read_text())
    assert config["int8"] and config["int8_method"] == "qat"
    assert config["qat"]["scheme"] == "int8"
    _, layers = folded(asr)
    graph = onnx.load(str(folder / "encoder.int8.onnx")).graph
    int8 = [i for i in graph.initializer if i.name.endswith(".qat.int8")]
    assert all(i.data_type == onnx.TensorProto.INT8 for i in int8)
    encoder_side = [x for x in layers if x.name.startswith(("frontend", "encoder"))]
    # every encoder-side weight, and the joiner's encoder projection
    assert config["qat"]["quantized"]["encoder.onnx"]["weights"] == len(encoder_side) + 1
    assert len(int8) == len(encoder_side) + 1
    inputs = [x for x in encoder_side if x.input_qparams is not None]
    assert config["qat"]["quantized"]["encoder.onnx"]["inputs"] == len(inputs) + 1
    scales = {float(onnx.numpy_helper.to_array(i)) for i in graph.initializer
              if i.name.endswith("qat_input.scale")}  # fmt: skip
    assert {np.float32(x.input_qparams[0]) for x in inputs} <= scales
    for name in ("predictor", "joiner"):
        ops = {n.op_type for n in onnx.load(str(folder / f"{name}.int8.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name


def test_onnxruntime_runs_integer_kernels(onnx_export, tmp_path):
    import onnx
    import onnxruntime as ort

    _, folder = onnx_export
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(folder / "encoder.int8.onnx"), options,
                         providers=["CPUExecutionProvider"])  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in ops or "QLinearMatMul" in ops


def test_the_int8_encoder_computes_the_fake_quantized_model(onnx_export):
    import onnxruntime as ort

    asr, folder = onnx_export
    config = json.loads((folder / "config.json").read_text())
    session = ort.InferenceSession(str(folder / "encoder.int8.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    waves = torch.from_numpy(np.stack([speech_like(1.0, 7), speech_like(1.0, 8)]))
    with torch.no_grad():
        feats, _ = asr.features(waves, torch.full((2,), waves.shape[1]))
        state = asr.model.init_state(2)
        feeds_state = {s["name"]: t.numpy() for s, (_, t) in
                       zip(config["encoder_state"], state_leaves(state, "s"), strict=True)}  # fmt: skip
        for start in (0, 32):  # two chunks: the state carries over in both
            chunk = feats[:, start : start + 32]
            memory, state = asr.model.forward_chunk(chunk, state)
            out = session.run(None, {"feats": chunk.numpy(), **feeds_state})
            np.testing.assert_allclose(out[0], memory.numpy(), rtol=0, atol=TOLERANCE)
            feeds_state = dict(zip(feeds_state, out[2:], strict=True))
    # the fp32 graph (quantized weights, float activations) is not the fake-quantized model
    fp32 = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    first = {s["name"]: t.numpy() for s, (_, t) in
             zip(config["encoder_state"], state_leaves(asr.model.init_state(2), "s"), strict=True)}  # fmt: skip
    with torch.no_grad():
        memory, _ = asr.model.forward_chunk(feats[:, :32], asr.model.init_state(2))
    plain = fp32.run(None, {"feats": feats[:, :32].numpy(), **first})[0]
    assert np.abs(plain - memory.numpy()).max() > 100 * TOLERANCE


def test_transcripts_equal_the_fake_quantized_models(onnx_export):
    from mamba_asr.runtime.onnx import OnnxASR

    asr, folder = onnx_export
    onnx_asr = OnnxASR.load(folder, int8=True)
    greedy = DecodingOptions(strategy="greedy")
    texts = []
    for seed in range(5):
        wave = speech_like(2.0, 20 + seed)
        ours = onnx_asr.transcribe_waveform(wave, 16000, greedy)
        theirs = transcribe_waveform(asr, wave, 16000, options=greedy)
        assert ours.text == theirs.text, seed
        texts.append(ours.text)
    assert any(texts)


def test_core_ml_int8_weights_are_the_qat_integers(tmp_path):
    ct = pytest.importorskip("coremltools")
    from coremltools.libmilstoragepython import _BlobStorageReader

    from mamba_asr.cli import main

    asr = qat_model("int8-weights", "model.d_model=64")  # Core ML leaves weights < 2048 values
    model = asr.save(tmp_path / "qat.pt")
    out = tmp_path / "qat.mlpackage"
    assert main(["export", "coreml", str(model), "--out", str(out), "--weights", "int8"]) == 0
    spec = ct.utils.load_spec(str(out))
    meta = json.loads(spec.description.metadata.userDefined["mamba_asr"])
    assert meta["qat"] == "int8-weights" and meta["weights"] == "int8"
    reader = _BlobStorageReader(str(out / "Data/com.apple.CoreML/weights/weight.bin"))
    _, layers = folded(asr)
    found = set()
    for function in ("encoder", "predictor", "joiner"):
        fn = spec.mlProgram.functions[function]
        ops = [op for block in fn.block_specializations.values() for op in block.operations]
        for op in ops:
            if op.type != "constexpr_blockwise_shift_scale":
                continue
            data, scale = (op.inputs[k].arguments[0].value for k in ("data", "scale"))
            assert data.type.tensorType.dataType == ct.proto.MIL_pb2.INT8
            layer = next(x for x in layers if x.name.replace(".", "_") + "_weight" in
                         op.outputs[0].name)  # fmt: skip
            q = np.array(reader.read_int8_data(data.blobFileValue.offset)).reshape(layer.q.shape)
            bits = np.array(reader.read_fp16_data(scale.blobFileValue.offset), np.uint16)
            s = bits.view(np.float16).astype(np.float32).reshape(-1)
            np.testing.assert_array_equal(q, layer.q)
            np.testing.assert_allclose(s, layer.scale, rtol=1e-3)
            found.add(layer.name)
    big = {x.name for x in layers if x.weight.size > 2048 and not x.name.startswith("ctc")}
    assert found == big


@pytest.fixture(scope="module", params=[32, 64], ids=["block32", "block64"])
def int4_export(tmp_path_factory, request):
    """An int4 QAT model's export at its own block (64: chosen by the export itself) with a
    chunk graph of 320 ms."""
    asr = qat_model("int4-weights", block=request.param)
    folder = tmp_path_factory.mktemp("onnx") / "qat4"
    export_onnx(asr, folder, int4=True, chunk_ms=320)
    return asr, folder


def test_an_int4_qat_model_is_not_rounded_again(int4_export, tmp_path):
    asr, _ = int4_export
    with pytest.raises(ValueError, match="a model of int4 QAT exports the integers it was"):
        export_onnx(asr, tmp_path / "x", int4=True, int4_method="hqq")
    assert not (tmp_path / "x").exists()


def test_the_int4_graphs_hold_the_qat_integers_and_scales_exactly(int4_export):
    """Every MatMulNBits of the int4 graphs dequantizes (fp16 scales read through their Cast)
    to a folded QAT weight bit for bit, in the model's block; every Linear and pointwise
    convolution of the model is one, in the offline graph and in the chunk graph; the fp32
    graphs hold the folded weights too."""
    import onnx
    from onnx import numpy_helper

    asr, folder = int4_export
    config = json.loads((folder / "config.json").read_text())
    assert config["qat"] == {"scheme": "int4-weights", "quantized": None}
    _, layers = folded(asr)
    block = asr.model.joiner.out.parametrizations.weight[0].block
    assert layers and all(x.block == block for x in layers)
    assert {x.kind for x in layers} == {"linear", "conv1d"}  # conv1d: the pointwise ones
    found, pointwise = set(), {x.name for x in layers if x.kind == "conv1d"}
    for name in ("encoder", "encoder_chunk", "predictor", "joiner"):
        graph = onnx.load(str(folder / f"{name}.int4.onnx")).graph
        dequantized = dequantized_int4(graph)
        assert dequantized, name
        blocks = {a.i for n in graph.node for a in n.attribute if a.name == "block_size"}
        assert blocks == {block}, name
        names = set()
        for w in dequantized.values():
            match = [x for x in layers if x.weight.T.shape == w.shape
                     and np.array_equal(x.weight.T, w)]  # fmt: skip
            assert match, name
            names.add(match[0].name)
        if name.startswith("encoder"):
            assert pointwise <= names, name
        found |= names
        fp32 = {i.name: numpy_helper.to_array(i) for i in
                onnx.load(str(folder / f"{name}.onnx")).graph.initializer}  # fmt: skip
        assert any(np.array_equal(v, w) for x in layers for v in (x.weight, x.weight.T)
                   for w in fp32.values() if w.shape == v.shape), name  # fmt: skip
    assert found == {x.name for x in layers if not x.name.startswith("ctc")}


def test_the_int4_encoder_is_close_to_the_fake_quantized_model(int4_export):
    """The int4 encoder's memory is near the fake-quantized PyTorch model's (the same
    weights; onnxruntime rounds the activations to int8 per block within a product), nearer
    than the float model's."""
    from mamba_asr.runtime.onnx import OnnxASR

    asr, folder = int4_export
    onnx_model = OnnxASR.load(folder, int4=True).model
    assert onnx_model.chunk_frames == 32
    plain, _ = folded(asr)
    for frames in (32, 48):  # the chunk graph's chunk, longer: the offline graph
        feats = torch.randn(2, frames, 80, generator=torch.Generator().manual_seed(frames))
        got, _, _ = onnx_model.encode(feats.numpy(), onnx_model.init_state(2))
        with torch.no_grad():
            ref, _ = asr.model.forward_chunk(feats, asr.model.init_state(2))
            folded_ref, _ = plain.model.forward_chunk(feats, plain.model.init_state(2))
        torch.testing.assert_close(folded_ref, ref, rtol=0, atol=1e-5)
        error = np.linalg.norm(got - ref.numpy()) / np.linalg.norm(ref.numpy())
        assert error <= 0.05, (frames, error)
