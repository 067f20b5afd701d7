"""Small stand-in front end and encoder for model tests that need no real ones."""

from __future__ import annotations

from torch import Tensor, nn

from mamba_asr.modules.mamba import BiMamba


class PairFrontEnd(nn.Module):
    """Stand-in front end: stacks frame pairs (2x fewer frames) and projects them."""

    def __init__(self, n_mels: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * n_mels, d_model)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, frames, mels = feats.shape
        pairs = feats[:, : frames // 2 * 2].reshape(batch, frames // 2, 2 * mels)
        return self.proj(pairs), lengths // 2


class BiMambaEncoder(nn.Module):
    """Stand-in encoder: one pre-norm residual BiMamba block (padding-safe)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mamba = BiMamba(d_model, d_state=4)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return x + self.mamba(self.norm(x), lengths)
