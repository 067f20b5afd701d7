"""Tests for the attention blocks: shapes, the relative shift, masks, padding, references."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.modules.attention import MultiHeadAttention, RelPosMHAXL, rel_shift
from mamba_asr.modules.positional import RelativePositionalEncoding


def make_relpos(d_model: int = 32, nhead: int = 4, **kwargs: object) -> RelPosMHAXL:
    model = RelPosMHAXL(d_model, nhead, **kwargs).eval()
    with torch.no_grad():  # the biases start random already; give out_proj a nonzero bias too
        model.out_proj.bias.normal_()
    return model


def make_mha(d_model: int = 32, nhead: int = 4, **kwargs: object) -> MultiHeadAttention:
    model = MultiHeadAttention(d_model, nhead, **kwargs).eval()
    with torch.no_grad():
        model.in_proj.bias.normal_()
        model.out_proj.bias.normal_()
    return model


def padded(lengths: list[int], dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (B, L, dim) input with 1e3-scale garbage on padded frames, its lengths and the
    (B, L) valid-frame mask."""
    lens = torch.tensor(lengths)
    length = max(lengths)
    valid = torch.arange(length)[None, :] < lens[:, None]
    x = torch.randn(len(lengths), length, dim)
    x = torch.where(valid[..., None], x, 1e3 * torch.randn_like(x))
    return x, lens, valid


def relpos_naive(model: RelPosMHAXL, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
    """O(L^2) loop: score(i, j) from the explicit distance i - j; one utterance, no mask."""
    length, heads, dim = x.shape[1], model.nhead, model.head_dim
    q, k, v = model.in_proj(x[0]).unflatten(-1, (3, heads, dim)).unbind(1)  # (L, H, E) each
    p = model.linear_pos(pos_emb).unflatten(-1, (heads, dim))  # (2L-1, H, E)
    scores = torch.empty(heads, length, length)
    for i in range(length):
        for j in range(length):
            row = (length - 1) - (i - j)  # pos_emb row of distance i - j
            content = ((q[i] + model.pos_bias_u) * k[j]).sum(-1)  # (H,)
            position = ((q[i] + model.pos_bias_v) * p[row]).sum(-1)  # (H,)
            scores[:, i, j] = (content + position) / dim**0.5
    out = scores.softmax(-1) @ v.transpose(0, 1)  # (H, L, E)
    return model.out_proj(out.transpose(0, 1).flatten(1))[None]  # (1, L, M)


def test_rel_shift_indexes_by_distance() -> None:
    length = 6
    x = torch.randn(2, 3, length, 2 * length - 1)
    out = rel_shift(x)
    assert out.shape == (2, 3, length, length)
    for i in range(length):
        for j in range(length):
            assert torch.equal(out[..., i, j], x[..., i, length - 1 - i + j])


@pytest.mark.parametrize("length", [1, 2, 9])
def test_relpos_matches_naive_loop(length: int) -> None:
    model = make_relpos()
    x = torch.randn(1, length, 32)
    pos_emb = RelativePositionalEncoding(32)(x)
    assert pos_emb.shape == (2 * length - 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, pos_emb), relpos_naive(model, x, pos_emb), atol=1e-5, rtol=1e-4
        )


def test_relpos_accepts_batched_pos_emb_and_depends_on_positions() -> None:
    model = make_relpos()
    x = torch.randn(2, 7, 32)
    pos_emb = RelativePositionalEncoding(32)(x)
    with torch.no_grad():
        y = model(x, pos_emb)
        torch.testing.assert_close(model(x, pos_emb[None]), y)
        assert (model(x, torch.randn_like(pos_emb)) - y).abs().max() > 1e-3
    assert y.shape == x.shape and y.dtype == x.dtype


def test_shapes_and_dtype() -> None:
    query, memory = torch.randn(3, 5, 32), torch.randn(3, 11, 32)
    mha = make_mha()
    assert mha(query, memory, memory).shape == (3, 5, 32)
    relpos = make_relpos(dtype=torch.float64)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    y = relpos(x, RelativePositionalEncoding(32)(x))
    assert y.shape == x.shape and y.dtype == torch.float64


def test_mha_matches_torch_multihead_attention() -> None:
    ours = make_mha()
    theirs = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.in_proj.weight)
        theirs.in_proj_bias.copy_(ours.in_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    query, memory = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    padding = torch.arange(9)[None, :] >= torch.tensor([9, 4])[:, None]  # (B, S)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    with torch.no_grad():
        expected, _ = theirs(query, memory, memory, key_padding_mask=padding)
        torch.testing.assert_close(ours(query, memory, memory, padding), expected)
        expected, _ = theirs(query, query, query, attn_mask=causal)
        torch.testing.assert_close(ours(query, query, query, attn_mask=causal), expected)


def attention_cases() -> list[tuple[str, object]]:
    return [("relpos", make_relpos()), ("mha", make_mha())]


def run(name: str, model: torch.nn.Module, x: torch.Tensor, padding=None, attn_mask=None):
    if name == "relpos":
        return model(x, RelativePositionalEncoding(32)(x), padding, attn_mask)
    return model(x, x, x, padding, attn_mask)


@pytest.mark.parametrize("name", ["relpos", "mha"])
def test_padded_batch_equals_each_alone(name: str) -> None:
    model = dict(attention_cases())[name]
    x, lengths, valid = padded([13, 5, 9, 1], 32)
    x.requires_grad_()
    weights = torch.randn(4, 13, 32) * valid[..., None]  # loss on valid frames only
    y = run(name, model, x, ~valid)
    (y * weights).sum().backward()
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    for b, n in enumerate(lengths.tolist()):
        alone = x[b : b + 1, :n].detach().clone().requires_grad_()
        y_alone = run(name, model, alone)
        (y_alone * weights[b : b + 1, :n]).sum().backward()
        torch.testing.assert_close(y[b : b + 1, :n], y_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x.grad[b : b + 1, :n], alone.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["relpos", "mha"])
def test_fully_masked_rows_are_zero_not_nan(name: str) -> None:
    model = dict(attention_cases())[name]
    x = torch.randn(2, 6, 32, requires_grad=True)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1] = True  # utterance 1: every key padded
    attn_mask = torch.zeros(6, 6, dtype=torch.bool)
    attn_mask[2] = True  # query 2: no key at all
    y = run(name, model, x, padding, attn_mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    bias = model.out_proj.bias.detach()  # a row of zero attention output -> out_proj bias
    torch.testing.assert_close(y[1].detach(), bias.expand(6, 32))
    torch.testing.assert_close(y[0, 2].detach(), bias)
    assert (y[0, [0, 1, 3, 4, 5]] - bias).abs().amax() > 1e-3


@pytest.mark.parametrize("name", ["relpos", "mha"])
def test_causal_mask_hides_the_future(name: str) -> None:
    model = dict(attention_cases())[name]
    x = torch.randn(2, 10, 32)
    causal = torch.ones(10, 10, dtype=torch.bool).triu(1)
    x2 = x.clone()
    x2[:, 6] += 1.0
    with torch.no_grad():
        y, y2 = run(name, model, x, attn_mask=causal), run(name, model, x2, attn_mask=causal)
    assert (y[:, :6] - y2[:, :6]).abs().max() < 1e-6
    assert (y[:, 6:] - y2[:, 6:]).abs().max() > 1e-3


def test_dropout_only_in_training() -> None:
    model = make_relpos(dropout=0.5)
    x = torch.randn(2, 8, 32)
    pos_emb = RelativePositionalEncoding(32)(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x, pos_emb), model(x, pos_emb))
        model.train()
        assert (model(x, pos_emb) - model(x, pos_emb)).abs().max() > 1e-4


@pytest.mark.parametrize("cls", [RelPosMHAXL, MultiHeadAttention])
def test_bad_nhead_names_the_option(cls: type) -> None:
    with pytest.raises(ValueError, match="nhead"):
        cls(30, 4)


@pytest.mark.parametrize(
    ("cls", "expected"),
    [(RelPosMHAXL, 5 * 256**2 + 3 * 256), (MultiHeadAttention, 4 * 256**2 + 4 * 256)],
)
def test_parameter_layout(cls: type, expected: int) -> None:
    """SpeechBrain's layouts: RelPosMHAXL has no in_proj bias, linear_pos has none."""
    model = cls(256, 4, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", ["relpos", "mha"])
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = dict(attention_cases())[name]
    x = torch.randn(2, 7, 32)
    y = run(name, model, x, torch.arange(7)[None, :] >= torch.tensor([7, 4])[:, None])
    (y * torch.randn_like(y)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", ["relpos", "mha"])
def test_runs_on_meta(name: str) -> None:
    model = dict(attention_cases())[name].to("meta")
    x = torch.randn(2, 7, 32, device="meta")
    padding = torch.zeros(2, 7, dtype=torch.bool, device="meta")
    y = run(name, model, x, padding, torch.ones(7, 7, dtype=torch.bool, device="meta").triu(1))
    assert y.device.type == "meta" and y.shape == x.shape


def test_mask_shapes() -> None:
    """A (B, L, S) attn_mask works per utterance; a mis-shaped key_padding_mask is an error."""
    model = make_mha()
    x = torch.randn(2, 6, 32)
    padding = torch.arange(6)[None, :] >= torch.tensor([6, 3])[:, None]  # (B, S)
    with torch.no_grad():
        expected = model(x, x, x, key_padding_mask=padding)
        per_utterance = padding[:, None, :].expand(2, 6, 6)  # (B, L, S)
        torch.testing.assert_close(model(x, x, x, attn_mask=per_utterance), expected)
    with pytest.raises(ValueError, match="key_padding_mask"):
        model(x, x, x, key_padding_mask=padding[0])
    with pytest.raises(ValueError, match="attn_mask"):
        model(x, x, x, attn_mask=torch.zeros(6, dtype=torch.bool))
