"""Export of models to other runtimes: ONNX (``onnx``) and Core ML (``coreml``)."""

# int4 weights of the ONNX export (``export_onnx(int4=True)``): one scale per block of this
# many input channels of a matrix product; the blocks it may take (those of int4 QAT)
from mamba_asr.config import INT4_BLOCK, INT4_BLOCKS

INT4_METHODS = ("rtn", "hqq")  # export_onnx(int4_method=): how weights become int4

__all__ = ["INT4_BLOCK", "INT4_BLOCKS", "INT4_METHODS"]
