"""Recognition without PyTorch: an exported streaming transducer on onnxruntime (``onnx``),
with NumPy features (``features``) and searches (``search``). Nothing here imports torch."""
