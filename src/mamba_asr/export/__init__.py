"""Export of models to other runtimes: ONNX (``onnx``) and Core ML (``coreml``)."""

# int4 weights of the ONNX export (``export_onnx(int4=True)``): one scale per block of this
# many input channels of a matrix product; the blocks it may take
INT4_BLOCK = 32
INT4_BLOCKS = (16, 32, 64, 128, 256)
