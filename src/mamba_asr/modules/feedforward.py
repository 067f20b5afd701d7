"""Position-wise feed-forward block (Transformer/Conformer FFN)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """Activation module by name; ValueError naming the allowed values otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """Linear(d_model -> d_ffn) -> activation -> dropout -> Linear(d_ffn -> d_model) -> dropout.

    x: (B, L, d_model) -> (B, L, d_model); frame-wise, so padding cannot leak.
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float = 0.0,
        activation: str = "swish",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ffn, **factory),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(d_ffn, d_model, **factory),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
