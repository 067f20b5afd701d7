"""Inference outside PyTorch: ``mlx`` (Apple's MLX; ``pip install "mamba-asr[mlx]"``).

A backend runs a model file's network in another array library; the audio front end (features,
CMVN), the tokenizer, the decoding options, the streams, the endpoint rule, the transcripts and
their writers are the package's own, shared with the PyTorch path.
"""
