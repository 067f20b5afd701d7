"""mamba-asr: speech recognition with Mamba (selective state-space) models on every device."""

from __future__ import annotations

__version__ = "0.1.0"
