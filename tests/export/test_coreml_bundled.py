"""The bundled model's streaming encoder converted to Core ML: every Mamba layer's conv and SSM
states and every front-end cache are states of the program, read and written once per chunk.

Only the encoder function is converted (``mamba_asr.export.coreml._encoder``, what
``mamba-asr export coreml`` does first), for chunks of one encoder frame (8 feature frames, the
scan unrolled once): it holds the states, whose shapes do not depend on the chunk, and the
whole package at 320 ms takes twice as long (test_coreml.py runs the whole export on a tiny
model).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import mamba_asr
from mamba_asr.export.coreml import _encoder, _quiet, state_name
from mamba_asr.export.onnx import state_leaves
from mamba_asr.pretrained import bundled_path

ct = pytest.importorskip("coremltools")

pytestmark = [
    pytest.mark.slow,  # about 25 s on a small CPU
    pytest.mark.skipif(not bundled_path().is_file(), reason="bundled model file not built yet"),
]


def test_bundled_encoder_states_and_operations():
    asr = mamba_asr.load_model(device="cpu")
    with torch.no_grad(), _quiet():
        spec = _encoder(asr.model, 8, asr.config.features.n_mels).get_spec()
    start = state_leaves(asr.model.init_state(1), "state")
    states = [(s.name, list(s.type.stateType.arrayType.shape)) for s in spec.description.state]
    assert states == [(state_name(n), list(t.shape)) for n, t in start]
    layers = asr.config.model.num_encoder_layers
    assert len(states) == len(asr.model.frontend.stages) + 2 * layers
    assert states[-1][0] == f"state_encoder_layers_{layers - 1}_ssm"
    assert [list(f.type.multiArrayType.shape) for f in spec.description.input] == [[1, 8, 80]]
    assert [f.name for f in spec.description.output] == ["memory", "encoder_proj"]
    fn = spec.mlProgram.functions["main"]
    ops = Counter(op.type for b in fn.block_specializations.values() for op in b.operations)
    assert ops["read_state"] == ops["write_state"] == len(states)
    assert ops["softplus"] == layers and not {"while_loop", "cond"} & set(ops)
