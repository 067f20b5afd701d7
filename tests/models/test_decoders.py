"""Tests for the decoders: layout and sizes, causality, padding, packing, devices, gradients."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.models.decoders import (
    DECODERS,
    MambaDecoder,
    TransformerDecoder,
    pack_memory_and_tokens,
)
from mamba_asr.modules.mamba import Mamba

NAMES = sorted(DECODERS)
VOCAB, D_MODEL = 23, 16


def make(name: str, seed: int = 0, **kwargs: object) -> TransformerDecoder | MambaDecoder:
    torch.manual_seed(seed)
    opts: dict[str, object] = {
        "vocab_size": VOCAB,
        "d_model": D_MODEL,
        "num_layers": 2,
        "d_ffn": 32,
        "dropout": 0.1,
        "nhead": 4,
        "mamba": {"d_state": 8, "expand": 2, "d_conv": 4},
    }
    opts.update(kwargs)
    return DECODERS[name](**opts).eval()


def padded_inputs(
    token_lengths: list[int], memory_lengths: list[int], seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random tokens and memory with garbage (other ids, huge values) in the padding."""
    gen = torch.Generator().manual_seed(seed)
    tok_len, mem_len = torch.tensor(token_lengths), torch.tensor(memory_lengths)
    batch, steps, frames = len(token_lengths), max(token_lengths), max(memory_lengths)
    tokens = torch.randint(0, VOCAB, (batch, steps), generator=gen)
    memory = torch.randn(batch, frames, D_MODEL, generator=gen)
    mem_valid = torch.arange(frames)[None, :] < mem_len[:, None]
    garbage = 1e3 * torch.randn(batch, frames, D_MODEL, generator=gen)
    memory = torch.where(mem_valid[..., None], memory, garbage)
    return tokens, tok_len, memory, mem_len


def test_registry() -> None:
    assert set(DECODERS) == {"transformer", "mamba"}
    assert DECODERS["transformer"] is TransformerDecoder and DECODERS["mamba"] is MambaDecoder


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_zero_padding(name: str) -> None:
    model = make(name)
    tokens, tok_len, memory, mem_len = padded_inputs([6, 3, 1], [9, 4, 7])
    y = model(tokens, tok_len, memory, mem_len)
    assert y.shape == (3, 6, D_MODEL) and y.dtype == torch.float32
    valid = torch.arange(6)[None, :] < tok_len[:, None]
    assert torch.isfinite(y).all() and y[valid].abs().min() > 0
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))


def transformer_count(vocab: int, d: int, layers: int, ffn: int) -> int:
    attention = 4 * d * d + 4 * d  # in_proj (3d x d + 3d) + out_proj (d x d + d)
    feed_forward = 2 * d * ffn + ffn + d
    layer = 2 * attention + feed_forward + 3 * 2 * d  # three LayerNorms
    return vocab * d + layers * layer + 2 * d  # embedding, layers, final LayerNorm


def mamba_count(vocab: int, d: int, layers: int, ffn: int, d_state: int = 16) -> int:
    inner, rank, conv = 2 * d, -(-d // 16), 4
    mamba = (
        d * 2 * inner  # in_proj, no bias
        + inner * conv
        + inner  # depthwise conv1d with bias
        + inner * (rank + 2 * d_state)  # x_proj
        + rank * inner
        + inner  # dt_proj
        + inner * d_state
        + inner  # A_log, D
        + inner * d  # out_proj, no bias
    )
    feed_forward = 2 * d * ffn + ffn + d
    layer = 2 * mamba + feed_forward + 3 * 2 * d
    return vocab * d + layers * layer + 2 * d


@pytest.mark.parametrize(
    ("vocab", "d", "layers", "nhead", "ffn", "transformer", "mamba"),
    [
        (5000, 512, 6, 8, 2048, 27_785_216, 35_514_368),  # S2S large
        (5000, 144, 4, 4, 1024, 2_576_224, 3_071_584),  # S2S small
    ],
)
def test_parameter_counts(
    vocab: int, d: int, layers: int, nhead: int, ffn: int, transformer: int, mamba: int
) -> None:
    """Layouts of xi-j/Mamba-ASR (SpeechBrain): biases, norms and embedding as the original."""
    t = TransformerDecoder(vocab, d, layers, nhead, ffn, device="meta")
    m = MambaDecoder(vocab, d, layers, nhead, ffn, device="meta")
    assert sum(p.numel() for p in t.parameters()) == transformer_count(vocab, d, layers, ffn)
    assert sum(p.numel() for p in m.parameters()) == mamba_count(vocab, d, layers, ffn)
    assert transformer_count(vocab, d, layers, ffn) == transformer
    assert mamba_count(vocab, d, layers, ffn) == mamba


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("normalize_before", [True, False])
def test_causality(name: str, normalize_before: bool) -> None:
    """Changing token k changes no output before k and changes the output at k."""
    model = make(name, normalize_before=normalize_before)
    tokens, tok_len, memory, mem_len = padded_inputs([9, 9], [12, 12])
    with torch.no_grad():
        y = model(tokens, tok_len, memory, mem_len)
        for k in (0, 4, 8):
            changed = tokens.clone()
            changed[:, k] = (changed[:, k] + 1) % VOCAB
            y2 = model(changed, tok_len, memory, mem_len)
            if k > 0:
                assert (y[:, :k] - y2[:, :k]).abs().max() < 1e-6
            assert (y[:, k] - y2[:, k]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_prefix_gives_prefix_outputs(name: str) -> None:
    model = make(name)
    tokens, tok_len, memory, mem_len = padded_inputs([8, 8], [10, 6])
    with torch.no_grad():
        full = model(tokens, tok_len, memory, mem_len)
        for u in (1, 5):
            prefix = model(tokens[:, :u], torch.full((2,), u), memory, mem_len)
            torch.testing.assert_close(prefix, full[:, :u], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_used_and_its_padding_is_not(name: str) -> None:
    model = make(name)
    tokens, tok_len, memory, mem_len = padded_inputs([5, 5], [10, 6])
    with torch.no_grad():
        y = model(tokens, tok_len, memory, mem_len)
        valid_change = memory.clone()
        valid_change[:, :6] += torch.randn(2, 6, D_MODEL)  # frames valid in both utterances
        assert (model(tokens, tok_len, valid_change, mem_len) - y).abs().amax(
            dim=(1, 2)
        ).min() > 1e-4
        pad_change = memory.clone()
        pad_change[1, 6:] = -pad_change[1, 6:]
        torch.testing.assert_close(model(tokens, tok_len, pad_change, mem_len), y, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_alone(name: str) -> None:
    """Outputs and memory gradients of a padded batch equal those of each utterance alone,
    even with NaN and out-of-vocabulary ids in the padding."""
    model = make(name)
    tokens, tok_len, memory, mem_len = padded_inputs([7, 2, 5, 1], [6, 11, 3, 8])
    tokens[1, 2:] = -1
    memory[2, 3:] = float("nan")
    memory.requires_grad_()
    y = model(tokens, tok_len, memory, mem_len)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    for b, (u, t) in enumerate(zip(tok_len.tolist(), mem_len.tolist(), strict=True)):
        mem_alone = memory[b : b + 1, :t].detach().clone().requires_grad_()
        y_alone = model(tokens[b : b + 1, :u], torch.tensor([u]), mem_alone, torch.tensor([t]))
        (y_alone * weights[b : b + 1, :u]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, :u], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(memory.grad[b : b + 1, :t], mem_alone.grad, atol=1e-5, rtol=1e-4)
    mem_valid = torch.arange(memory.shape[1])[None, :] < mem_len[:, None]
    assert torch.equal(memory.grad[~mem_valid], torch.zeros_like(memory.grad[~mem_valid]))


def test_pack_memory_and_tokens() -> None:
    memory = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, -1.0]])[..., None]  # (2, 3, 1)
    x = torch.tensor([[10.0, 11.0], [12.0, -2.0]])[..., None]  # (2, 2, 1)
    packed, lengths, index = pack_memory_and_tokens(
        memory, torch.tensor([3, 2]), x, torch.tensor([2, 1])
    )
    assert packed.shape == (2, 5, 1)
    assert packed[0, :, 0].tolist() == [1.0, 2.0, 3.0, 10.0, 11.0]
    assert packed[1, :3, 0].tolist() == [4.0, 5.0, 12.0]  # the rest is padding
    assert lengths.tolist() == [5, 3]
    assert index.tolist() == [[3, 4], [2, 3]]
    torch.testing.assert_close(packed.gather(1, index[..., None])[0], x[0])


def test_cross_mamba_is_mamba_over_memory_then_target() -> None:
    """For one unpadded utterance the cross branch is Mamba(cat([memory, h]))[:, -U:], as the
    original (xi-j/Mamba-ASR MambaDecoderLayer)."""
    layer = make("mamba").layers[0]
    assert isinstance(layer.cross_mamba, Mamba)
    torch.manual_seed(2)
    memory, h = torch.randn(1, 9, D_MODEL), torch.randn(1, 4, D_MODEL)
    with torch.no_grad():
        ours = layer._cross(h, torch.tensor([4]), memory, torch.tensor([9]))
        original = layer.cross_mamba(torch.cat([memory, h], dim=1))[:, -4:]
    torch.testing.assert_close(ours, original, atol=1e-6, rtol=1e-5)


def test_mamba_config_ignores_bidirectional() -> None:
    model = make("mamba", mamba={"d_state": 4, "expand": 1, "d_conv": 2, "bidirectional": True})
    layer = model.layers[0]
    assert type(layer.self_mamba) is Mamba and type(layer.cross_mamba) is Mamba
    assert layer.self_mamba.d_state == 4 and layer.cross_mamba.d_inner == D_MODEL


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = make(name).train()
    tokens, tok_len, memory, mem_len = padded_inputs([6, 4], [8, 5])
    y = model(tokens, tok_len, memory, mem_len)
    (y * torch.randn_like(y)).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().max() > 0, param_name


@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype_reach_parameters(name: str) -> None:
    model = make(name, dtype=torch.float64)
    for param_name, param in model.named_parameters():
        expected = torch.float32 if param_name.endswith(("A_log", ".D")) else torch.float64
        assert param.dtype == expected, param_name
    tokens, tok_len, memory, mem_len = padded_inputs([4, 2], [5, 3])
    y = model(tokens, tok_len, memory.double(), mem_len)
    assert y.dtype == torch.float64

    meta = make(name, device="meta")
    for param_name, tensor in meta.state_dict().items():
        assert tensor.device.type == "meta", param_name
    y = meta(tokens.to("meta"), tok_len.to("meta"), memory.to("meta"), mem_len.to("meta"))
    assert y.device.type == "meta" and y.shape == (2, 4, D_MODEL)


def test_embedding_is_scaled_and_positions_added() -> None:
    model = make("transformer")
    tokens = torch.tensor([[3, 5, 7]])
    emb = model.embed(tokens)
    torch.testing.assert_close(emb, model.embed.embedding.weight[tokens] * D_MODEL**0.5)


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("transformer", "nhead", 3),
        ("transformer", "num_layers", 0),
        ("transformer", "activation", "tanh"),
        ("mamba", "d_ffn", 0),
        ("mamba", "vocab_size", 0),
    ],
)
def test_bad_options_name_the_option(name: str, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        make(name, **{option: value})
