"""A tiny transducer configuration for the model tests."""

from __future__ import annotations

from mamba_asr.config import ModelConfig, from_dict


def tiny_transducer_config(vocab: int = 7, n_mels: int = 20, **overrides: object) -> ModelConfig:
    """A 2-layer causal MCT with 16-wide layers; ``overrides`` replace top-level keys, or merge
    into a section when given as a dict (``frontend={"subsampling": 8}``)."""
    data: dict = {
        "vocab_size": vocab, "encoder_module": "mamba", "decoder_module": "transducer",
        "d_model": 16, "num_encoder_layers": 2, "d_ffn": 32, "dropout": 0.0,
        "mamba": {"d_state": 4, "expand": 2, "d_conv": 3, "bidirectional": False},
        "frontend": {"kind": "causal", "n_mels": n_mels, "subsampling": 4, "channels": [8, 8],
                     "kernel_size": 3},
        "transducer": {"predictor_dim": 12, "joiner_dim": 10, "aux_ctc_weight": 0.2},
    }  # fmt: skip
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return from_dict(ModelConfig, data)
