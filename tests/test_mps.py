"""On Apple Silicon only: the selective scan, a streaming Mamba block and a ConMamba encoder on
MPS against the CPU. Skipped elsewhere (these machines have no Mac); the meta-device and dtype
tests in test_mps_safety.py are what runs here."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.config import load_recipe
from mamba_asr.models.factory import build_encoder
from mamba_asr.modules.mamba import Mamba
from mamba_asr.ops.selective_scan import selective_scan_fn, selective_scan_ref

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(
        not torch.backends.mps.is_available(), reason="needs Apple Silicon with MPS (macOS)"
    ),
]


def test_scan_on_mps_matches_reference():
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 32, 300, generator=g) for _ in range(3))
    A = -torch.rand(32, 16, generator=g) - 0.1
    B, C = (torch.randn(2, 16, 300, generator=g) for _ in range(2))
    D, bias = torch.randn(32, generator=g), torch.randn(32, generator=g) * 0.3
    cpu = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    mps = [t.detach().to("mps").requires_grad_() for t in cpu]
    out_ref = selective_scan_ref(*cpu, delta_softplus=True)
    out = selective_scan_fn(*mps, delta_softplus=True)  # auto: the chunked path on MPS
    torch.testing.assert_close(out.cpu(), out_ref, rtol=1e-4, atol=1e-4)
    out_ref.sum().backward()
    out.sum().backward()
    for a, b in zip(cpu, mps, strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-3)


def test_mamba_streaming_on_mps_equals_full():
    torch.manual_seed(0)
    block = Mamba(32, device="mps").eval()
    x = torch.randn(2, 50, 32, device="mps")
    full = block(x)
    state = block.init_state(2)
    chunks = []
    for piece in x.split([1, 7, 16, 26], dim=1):
        y, state = block.forward_chunk(piece, state)
        chunks.append(y)
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-4, atol=1e-4)


def test_conmamba_encoder_on_mps_matches_cpu():
    cfg = load_recipe("hparams/S2S/conmamba_small.yaml", ["model.num_encoder_layers=2"]).model
    torch.manual_seed(0)
    enc = build_encoder(cfg).eval()
    x = torch.randn(2, 40, cfg.d_model)
    lengths = torch.tensor([40, 31])
    ref = enc(x, lengths)
    out = enc.to("mps")(x.to("mps"), lengths.to("mps"))
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
