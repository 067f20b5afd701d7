"""Building blocks: Mamba blocks (causal and bidirectional)."""

from __future__ import annotations

from mamba_asr.modules.mamba import BiMamba, Mamba, MambaState

__all__ = ["BiMamba", "Mamba", "MambaState"]
