"""Reading the int4 weights of an ONNX graph (``MatMulNBits``) back as float matrices."""

from __future__ import annotations

import numpy as np


def dequantized_int4(graph) -> dict[str, np.ndarray]:
    """Each MatMulNBits node's weight as its int4 values less the zero point times their
    block's scale, (K, N); scales and zero points stored in fp16 are read through their Cast
    to fp32."""
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]].astype(np.float32)
    out = {}
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        assert attrs["bits"] == 4 and len(node.input) in (3, 4)
        packed = inits[node.input[1]]  # (N, blocks, block / 2), two values a byte, low first
        values = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1).astype(np.float32)
        scales = inits[node.input[2]].reshape(n, -1)  # (N, blocks)
        zero = 8.0  # symmetric: no zero points; else float ones (HQQ), a block each
        if len(node.input) == 4:
            zero = np.repeat(inits[node.input[3]].astype(np.float32).reshape(n, -1), block, 1)
        w = (values - zero) * np.repeat(scales, block, axis=1)
        out[node.name] = w[:, :k].T
    return out
