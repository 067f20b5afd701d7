"""Building blocks: Mamba blocks, attention, Conformer/ConMamba layers, the convolutional front end."""

from __future__ import annotations

from mamba_asr.modules.attention import MultiHeadAttention, RelPosMHAXL
from mamba_asr.modules.conformer import (
    ConformerLayer,
    ConMambaLayer,
    ConvolutionModule,
    TransformerEncoderLayer,
)
from mamba_asr.modules.feedforward import FeedForward
from mamba_asr.modules.frontend import ConvFrontEnd
from mamba_asr.modules.mamba import BiMamba, Mamba, MambaState

__all__ = [
    "BiMamba",
    "ConMambaLayer",
    "ConformerLayer",
    "ConvFrontEnd",
    "ConvolutionModule",
    "FeedForward",
    "Mamba",
    "MambaState",
    "MultiHeadAttention",
    "RelPosMHAXL",
    "TransformerEncoderLayer",
]
