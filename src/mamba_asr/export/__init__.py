"""Export of models to other runtimes: ONNX (``onnx``)."""
