"""Core ML export of a streaming transducer: the saved package, checked without a Mac.

A tiny random transducer (``helpers.recipes.tiny_asr("transducer")``) is exported once per
module; the tests read the package's spec (``ct.utils.load_spec``): its three functions, their
inputs, outputs and states (names, shapes, fp16), the operation types of each, the metadata;
weight compression; the refusals. A prediction needs Core ML itself: the test that runs one
chunk by chunk against PyTorch is marked ``macos`` and skipped elsewhere.
"""

from __future__ import annotations

import json
import platform
from collections import Counter

import numpy as np
import pytest
import torch

from helpers.recipes import tiny_asr
from mamba_asr.export.coreml import (
    MAX_HYPOTHESES,
    METADATA_KEY,
    StatefulEncoder,
    export_coreml,
    export_program,
    state_name,
)
from mamba_asr.export.onnx import state_leaves

ct = pytest.importorskip("coremltools")

FRAMES = 32  # 320 ms at a 10 ms hop: 4 encoder frames of the 8x front end
FP16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
INT32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model saved to a file and exported by ``mamba-asr export coreml MODEL``."""
    from mamba_asr.cli import main

    asr = tiny_asr("transducer", blank_bias=0.0)
    model = tmp_path_factory.mktemp("model") / "tiny.pt"
    asr.save(model)
    out = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    assert main(["export", "coreml", str(model), "--out", str(out)]) == 0
    return asr, out


@pytest.fixture(scope="module")
def spec(tiny):
    return ct.utils.load_spec(str(tiny[1]))


def functions(spec) -> dict:
    return {f.name: f for f in spec.description.functions}


def op_types(spec, function: str) -> Counter:
    fn = spec.mlProgram.functions[function]
    return Counter(
        op.type for block in fn.block_specializations.values() for op in block.operations
    )


def shape(feature) -> list:
    array = feature.type.multiArrayType
    if array.WhichOneof("ShapeFlexibility") == "shapeRange":
        return [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
    return list(array.shape)


def test_one_ios18_package_with_three_functions(tiny, spec):
    assert tiny[1].is_dir() and (tiny[1] / "Manifest.json").is_file()
    assert spec.specificationVersion >= 9  # iOS 18 / macOS 15: states, several functions
    assert spec.WhichOneof("Type") == "mlProgram"
    assert list(functions(spec)) == ["encoder", "predictor", "joiner"]
    assert spec.description.defaultFunctionName == "encoder"
    assert [p.name for p in tiny[1].parent.iterdir()] == ["tiny.mlpackage"]  # no leftovers


def test_encoder_states_are_the_streaming_state(tiny, spec):
    asr, _ = tiny
    encoder = functions(spec)["encoder"]
    expected = [
        (state_name(n), list(t.shape)) for n, t in state_leaves(asr.model.init_state(1), "state")
    ]
    states = [(s.name, list(s.type.stateType.arrayType.shape)) for s in encoder.state]
    assert states == expected
    names = [n for n, _ in states]
    assert names[:3] == [f"state_frontend_caches_{i}" for i in range(3)]
    assert names[3:] == ["state_encoder_layers_0_conv", "state_encoder_layers_0_ssm"]
    assert {s.type.stateType.arrayType.dataType for s in encoder.state} == {FP16}


def test_encoder_inputs_and_outputs(spec):
    encoder = functions(spec)["encoder"]
    assert [(f.name, shape(f)) for f in encoder.input] == [("feats", [1, FRAMES, 80])]
    assert encoder.input[0].type.multiArrayType.dataType == FP16
    outputs = {f.name: f.type.multiArrayType.dataType for f in encoder.output}
    assert outputs == {"memory": FP16, "encoder_proj": FP16}


def test_predictor_and_joiner_take_up_to_max_hypotheses(spec):
    predictor, joiner = functions(spec)["predictor"], functions(spec)["joiner"]
    n = (1, MAX_HYPOTHESES)
    assert [(f.name, shape(f)) for f in predictor.input] == [
        ("tokens", [n, (1, 1)]), ("predictor_state", [n, (1, 1)])
    ]  # fmt: skip
    assert {f.type.multiArrayType.dataType for f in predictor.input} == {INT32}
    assert [f.name for f in predictor.output] == ["predictor_proj", "new_predictor_state"]
    assert [(f.name, shape(f)) for f in joiner.input] == [
        ("encoder_proj", [n, (8, 8)]), ("predictor_proj", [n, (8, 8)])
    ]  # fmt: skip
    assert [f.name for f in joiner.output] == ["logits"]


def test_operation_types(spec):
    encoder = op_types(spec, "encoder")
    # each state read once and written once per chunk; the scan unrolled: no loop, no scan
    assert encoder["read_state"] == encoder["write_state"] == 5
    assert {"conv", "linear", "layer_norm", "silu", "softplus", "exp"} <= set(encoder)
    assert not {"while_loop", "cond", "scan"} & set(encoder)
    assert {"gather", "conv", "relu", "linear"} <= set(op_types(spec, "predictor"))
    assert {"linear", "add", "tanh"} <= set(op_types(spec, "joiner"))


def test_fp16_compute(spec):
    """Every float tensor of the encoder program is fp16 (compute_precision FLOAT16)."""
    fn = spec.mlProgram.functions["encoder"]
    dtypes = Counter(
        out.type.tensorType.dataType
        for block in fn.block_specializations.values()
        for op in block.operations
        for out in op.outputs
        if out.type.WhichOneof("type") == "tensorType"
    )
    mil = ct.proto.MIL_pb2
    assert dtypes[mil.FLOAT16] > 0 and dtypes[mil.FLOAT32] == 0


def test_metadata(tiny, spec):
    asr, _ = tiny
    meta = json.loads(spec.description.metadata.userDefined[METADATA_KEY])
    assert meta["format"] == "mamba-asr-coreml" and meta["weights"] == "float16"
    assert meta["chunk_frames"] == FRAMES and meta["model"]["subsampling"] == 8
    assert meta["model"]["blank"] == asr.model.blank and meta["model"]["vocab_size"] == 6
    features = meta["features"]
    assert features["n_mels"] == 80 and len(features["cmvn_mean"]) == 80
    assert [s["name"] for s in meta["encoder_state"]] == [
        s.name for s in functions(spec)["encoder"].state
    ]


def test_compressed_weights():
    """The encoder alone, 64 wide (coremltools leaves weights under 2048 values as they are):
    int8 and int4 weights become constants that Core ML expands when it loads the model."""
    from mamba_asr.export.coreml import _compress, _encoder, _quiet

    asr = tiny_asr("transducer", "model.d_model=64")
    with torch.no_grad(), _quiet():
        mlmodel = _encoder(asr.model, FRAMES, 80)
        compressed = {w: _compress(mlmodel, w).get_spec() for w in ("int8", "int4")}
    mil = ct.proto.MIL_pb2
    for weights, spec in compressed.items():
        fn = spec.mlProgram.functions["main"]
        ops = [op for block in fn.block_specializations.values() for op in block.operations]
        expand = [op for op in ops if op.type == "constexpr_blockwise_shift_scale"]
        assert len(expand) == 2, weights  # the Mamba in_proj and out_proj
        data = {op.inputs["data"].arguments[0].value.type.tensorType.dataType for op in expand}
        assert data == {mil.INT8 if weights == "int8" else mil.INT4}
        assert Counter(op.type for op in ops)["write_state"] == 5


def test_the_wrapper_calls_the_models_own_forward_chunk(tiny):
    asr, _ = tiny
    wrapper = StatefulEncoder(asr.model).eval()
    feats = torch.randn(1, 3 * FRAMES, 80)
    state = asr.model.init_state(1)
    with torch.no_grad():
        for i in range(3):
            chunk = feats[:, i * FRAMES : (i + 1) * FRAMES]
            memory, state = asr.model.forward_chunk(chunk, state)
            got, proj = wrapper(chunk)
            torch.testing.assert_close(got, memory, rtol=0, atol=0)
            torch.testing.assert_close(proj, asr.model.joiner.project_encoder(memory))
    for name, expected in state_leaves(state, "state"):
        torch.testing.assert_close(getattr(wrapper, state_name(name)), expected, rtol=0, atol=0)


def test_the_exported_program_carries_the_state_from_chunk_to_chunk(tiny):
    """What coremltools converts (the scan unrolled, the state written into the buffers),
    run in PyTorch: it equals ``forward_chunk`` chunk after chunk."""
    asr, _ = tiny
    feats = torch.randn(1, 3 * FRAMES, 80)
    with torch.no_grad():
        program = export_program(StatefulEncoder(asr.model).eval(), (feats[:, :FRAMES],))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("scan" in t for t in targets)
    assert len(program.graph_signature.buffers_to_mutate) == 5
    exported, state = program.module(), asr.model.init_state(1)
    with torch.no_grad():
        for i in range(3):
            chunk = feats[:, i * FRAMES : (i + 1) * FRAMES]
            memory, state = asr.model.forward_chunk(chunk, state)
            got, _ = exported(chunk)
            torch.testing.assert_close(got, memory, rtol=1e-5, atol=1e-5)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_model_without_a_streaming_form_is_refused(tmp_path):
    asr = tiny_asr("ctc")
    with pytest.raises(ValueError, match="Core ML export needs a streaming transducer") as err:
        export_coreml(asr, tmp_path / "x.mlpackage")
    assert "ctc" in one_line(err)
    bidirectional = tiny_asr("transducer", "model.encoder_module=conmamba", "model.nhead=2")
    with pytest.raises(ValueError, match="does not stream") as err:
        export_coreml(bidirectional, tmp_path / "x.mlpackage")
    assert "ConMambaEncoder" in one_line(err)
    lstm = tiny_asr("transducer", "model.transducer.predictor=lstm")
    with pytest.raises(ValueError, match="stateless predictor") as err:
        export_coreml(lstm, tmp_path / "x.mlpackage")
    assert "LSTMPredictor" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_bad_outputs_are_refused(tiny, tmp_path):
    asr, out = tiny
    with pytest.raises(ValueError, match=r"ends in \.mlpackage"):
        export_coreml(asr, tmp_path / "model")
    with pytest.raises(FileExistsError, match="already exists") as err:
        export_coreml(asr, out)
    one_line(err)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as err:
        export_coreml(asr, tmp_path / "file" / "x.mlpackage")
    assert "not a folder" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_conversion_leaves_nothing(tiny, tmp_path, monkeypatch):
    import mamba_asr.export.coreml as coreml

    asr, _ = tiny
    (tmp_path / "x.mlpackage").mkdir()
    (tmp_path / "x.mlpackage" / "old.txt").write_text("kept")

    def fail(*args, **kwargs):
        raise ValueError("Core ML conversion of the encoder failed: no such op")

    monkeypatch.setattr(coreml, "_encoder", fail)
    with pytest.raises(ValueError, match="encoder failed"):
        export_coreml(asr, tmp_path / "x.mlpackage", overwrite=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.txt", "x.mlpackage"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from mamba_asr.cli import main

    out = tmp_path / "x.mlpackage"
    assert main(["export", "coreml", "no-such-model", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-model" in err
    (tmp_path / "file").write_text("x")
    assert main(["export", "coreml", "--out", str(tmp_path / "file" / "x.mlpackage")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def macos_major() -> int:
    """macOS's major version, 0 elsewhere."""
    version = platform.mac_ver()[0] if platform.system() == "Darwin" else ""
    return int(version.split(".")[0]) if version else 0


@pytest.mark.macos
@pytest.mark.skipif(
    macos_major() < 15,
    reason="Core ML predictions need macOS 15 or later (coremltools converts here but cannot "
    "run a model)",
)
def test_prediction_chunk_by_chunk_equals_pytorch(tiny):
    asr, out = tiny
    encoder = ct.models.MLModel(str(out), function_name="encoder")
    predictor = ct.models.MLModel(str(out), function_name="predictor")
    joiner = ct.models.MLModel(str(out), function_name="joiner")
    state, ml_state = asr.model.init_state(1), encoder.make_state()
    feats = torch.randn(1, 4 * FRAMES, 80)
    for i in range(4):
        chunk = feats[:, i * FRAMES : (i + 1) * FRAMES]
        with torch.no_grad():
            memory, state = asr.model.forward_chunk(chunk, state)
        got = encoder.predict({"feats": chunk.numpy().astype(np.float16)}, state=ml_state)
        np.testing.assert_allclose(got["memory"], memory.numpy(), atol=5e-2, rtol=5e-2)
    tokens = np.array([[3], [4]], dtype=np.int32)
    context = np.array([[0], [5]], dtype=np.int32)
    pred = predictor.predict({"tokens": tokens, "predictor_state": context})
    with torch.no_grad():
        out_t, new = asr.model.predictor(torch.from_numpy(tokens), torch.from_numpy(context))
        proj = asr.model.joiner.project_predictor(out_t[:, 0])
    np.testing.assert_allclose(pred["predictor_proj"], proj.numpy(), atol=5e-2, rtol=5e-2)
    np.testing.assert_array_equal(pred["new_predictor_state"], new.numpy())
    enc = got["encoder_proj"][0, :2]
    logits = joiner.predict({"encoder_proj": enc, "predictor_proj": pred["predictor_proj"]})
    with torch.no_grad():
        expected = asr.model.joiner.join(
            torch.from_numpy(enc.astype(np.float32)),
            torch.from_numpy(pred["predictor_proj"].astype(np.float32)),
        )
    np.testing.assert_allclose(logits["logits"], expected.numpy(), atol=5e-2, rtol=5e-2)
