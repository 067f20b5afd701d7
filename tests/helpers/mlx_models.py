"""Shared by the MLX backend's tests: the skip when MLX is missing, and model pairs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mamba_asr.config import ModelConfig
from mamba_asr.models.factory import build_model as build_torch_model

MLX_MISSING = importlib.util.find_spec("mlx") is None
requires_mlx = pytest.mark.skipif(
    MLX_MISSING, reason='mlx is not installed (pip install "mamba-asr[mlx]"; on Linux mlx[cpu])'
)


def model_pair(cfg: ModelConfig, seed: int = 0):
    """A random PyTorch transducer of ``cfg`` (eval mode) and its MLX twin."""
    from mamba_asr.backends.mlx.model import build_model

    torch.manual_seed(seed)
    model = build_torch_model(cfg).eval()
    weights = {k: v.float().numpy() for k, v in model.state_dict().items()}
    return model, build_model(cfg, weights)
