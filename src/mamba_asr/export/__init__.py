"""Export of models to other runtimes: ONNX (``onnx``) and Core ML (``coreml``)."""
