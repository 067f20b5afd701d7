"""Pruned RNN-T: the simple loss and the full-band pruned loss against ``rnnt_loss`` (values and
gradients), valid ranges, the band on a peaked case, long sequences, autocast and padding."""

from __future__ import annotations

import pytest
import torch

from helpers.checks import assert_rel_close
from mamba_asr.ops.pruned_rnnt import (
    band_join,
    do_rnnt_pruning,
    prune_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)
from mamba_asr.ops.rnnt_loss import rnnt_loss


def make_inputs(batch, frames, n_tok, vocab, blank=0, scale=1.0):
    """Random am (B, T, V), lm (B, U + 1, V), non-blank targets and ragged lengths (the max ones,
    a one-frame utterance and one without tokens included when the batch allows)."""
    am = (scale * torch.randn(batch, frames, vocab)).requires_grad_()
    lm = (scale * torch.randn(batch, n_tok + 1, vocab)).requires_grad_()
    targets = torch.randint(0, vocab - 1, (batch, n_tok))
    targets = targets + (targets >= blank % vocab).long()  # never the blank
    logit_lengths = torch.randint(1, frames + 1, (batch,))
    target_lengths = torch.randint(0, n_tok + 1, (batch,))
    logit_lengths[0], target_lengths[0] = frames, n_tok
    if batch > 2:
        logit_lengths[1], target_lengths[2] = 1, 0
    return am, lm, targets, logit_lengths, target_lengths


def weights_for(loss):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(loss.shape, generator=gen) + 0.5


def full_band(batch, frames, n_tok):
    """Ranges that keep the whole lattice: (B, T, U + 1), every frame 0..U."""
    return torch.arange(n_tok + 1).expand(batch, frames, -1)


CASES = {  # (B, T, U, V, blank)
    "b4_t6_u3_v5": (4, 6, 3, 5, 0),
    "b3_t1_u2_v4": (3, 1, 2, 4, 0),
    "b5_t9_u5_v7_blank_last": (5, 9, 5, 7, -1),
    "b3_t4_u0_v3": (3, 4, 0, 3, 0),
    "b4_t12_u8_v16_blank2": (4, 12, 8, 16, 2),
}


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", list(CASES))
def test_simple_loss_equals_full_loss_of_the_sum(case, reduction):
    batch, frames, n_tok, vocab, blank = CASES[case]
    for _ in range(3):
        am, lm, targets, tl, ul = make_inputs(batch, frames, n_tok, vocab, blank, scale=2.0)
        kw = dict(blank=blank, reduction=reduction)
        simple = rnnt_loss_simple(lm, am, targets, tl, ul, **kw)
        full = rnnt_loss(am[:, :, None] + lm[:, None], targets, tl, ul, **kw)
        assert_rel_close(simple.loss, full, 1e-5, f"{case} loss")
        w = weights_for(full)
        grads = torch.autograd.grad((simple.loss * w).sum(), (am, lm))
        grads_ref = torch.autograd.grad((full * w).sum(), (am, lm))
        assert_rel_close(grads[0], grads_ref[0], 1e-5, f"{case} d/d am")
        assert_rel_close(grads[1], grads_ref[1], 1e-5, f"{case} d/d lm")


def test_posteriors_are_the_move_occupation():
    am, lm, targets, tl, ul = make_inputs(4, 8, 4, 6, scale=2.0)
    simple = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none")
    post = simple.blank_posterior + simple.emit_posterior  # (B, T, U + 1)
    assert not simple.blank_posterior.requires_grad
    # every path makes T_b - 1 + U_b moves and the final blank, one per cell it passes
    torch.testing.assert_close(post.sum((1, 2)), (tl + ul).float(), rtol=1e-5, atol=1e-5)
    for b in range(4):  # each frame is left by exactly one blank
        frame_blanks = simple.blank_posterior[b, : int(tl[b])].sum(-1)
        torch.testing.assert_close(frame_blanks, torch.ones_like(frame_blanks))
    none = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none", return_grad=False)
    assert none.blank_posterior is None and none.emit_posterior is None
    torch.testing.assert_close(none.loss, simple.loss)


@pytest.mark.parametrize("case", list(CASES))
def test_full_band_pruned_loss_equals_full_loss(case):
    batch, frames, n_tok, vocab, blank = CASES[case]
    am, lm, targets, tl, ul = make_inputs(batch, frames, n_tok, vocab, blank)
    simple = rnnt_loss_simple(lm, am, targets, tl, ul, blank=blank)
    ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, n_tok + 3)
    assert torch.equal(ranges, full_band(batch, frames, n_tok))
    logits = (2 * torch.randn(batch, frames, n_tok + 1, vocab)).requires_grad_()
    pruned = rnnt_loss_pruned(logits, targets, ranges, tl, ul, blank=blank, reduction="none")
    full = rnnt_loss(logits, targets, tl, ul, blank=blank, reduction="none")
    assert_rel_close(pruned, full, 1e-5, "loss")
    w = weights_for(full)
    (grad,) = torch.autograd.grad((pruned * w).sum(), logits)
    (grad_ref,) = torch.autograd.grad((full * w).sum(), logits)
    assert_rel_close(grad, grad_ref, 1e-5, "grad")


def test_gradient_flows_through_the_gathered_joiner_inputs():
    """Joiner am + lm on the full band: d/d am and d/d lm as for the full joint."""
    batch, frames, n_tok, vocab = 4, 7, 4, 6
    am, lm, targets, tl, ul = make_inputs(batch, frames, n_tok, vocab, scale=2.0)
    ranges = full_band(batch, frames, n_tok)
    pair = do_rnnt_pruning(am, lm, ranges)
    assert pair.am.shape == pair.lm.shape == (batch, frames, n_tok + 1, vocab)
    pruned = rnnt_loss_pruned(torch.tanh(pair.am + pair.lm), targets, ranges, tl, ul)
    full = rnnt_loss(torch.tanh(am[:, :, None] + lm[:, None]), targets, tl, ul)
    grads = torch.autograd.grad(pruned, (am, lm))
    grads_ref = torch.autograd.grad(full, (am, lm))
    assert_rel_close(pruned, full, 1e-5, "loss")
    assert_rel_close(grads[0], grads_ref[0], 1e-5, "d/d am")
    assert_rel_close(grads[1], grads_ref[1], 1e-5, "d/d lm")


def test_band_join_is_tanh_of_the_gathered_inputs():
    """band_join (torch backend) = tanh(am[b, t] + lm[b, ranges[b, t, r]]), values and gradients
    against the full (B, T, U + 1, J) joint read at the band's positions."""
    am, lm, _, _, _ = make_inputs(3, 6, 5, 7, scale=2.0)
    ranges = torch.randint(0, 6, (3, 6, 3))  # any positions, not only consecutive ones
    hidden = band_join(am, lm, ranges, backend="torch")
    full = torch.tanh(am[:, :, None] + lm[:, None])  # (B, T, U + 1, J)
    ref = full.gather(2, ranges[..., None].expand(-1, -1, -1, 7))
    w = torch.randn_like(ref)
    assert_rel_close(hidden, ref, 1e-6, "band_join")
    grads = torch.autograd.grad((hidden * w).sum(), (am, lm))
    grads_ref = torch.autograd.grad((ref * w).sum(), (am, lm))
    assert_rel_close(grads[0], grads_ref[0], 1e-6, "d/d am")
    assert_rel_close(grads[1], grads_ref[1], 1e-6, "d/d lm")
    with pytest.raises(ValueError, match="am_proj must be"):
        band_join(am[0], lm, ranges)


def check_ranges(ranges, tl, ul, s_range):
    """Shape, contiguity, s_0 = 0, non-decreasing, steps <= R - 1, last cell inside, in bounds."""
    batch, frames, width = ranges.shape
    assert torch.equal(ranges - ranges[..., :1], torch.arange(width).expand_as(ranges))
    s = ranges[..., 0]  # (B, T)
    assert (s[:, 0] == 0).all()
    steps = s[:, 1:] - s[:, :-1]
    assert (steps >= 0).all() and (steps <= width - 1).all()
    for b in range(batch):
        t_b, u_b = int(tl[b]), int(ul[b])
        assert ranges[b, t_b - 1, 0] <= u_b <= ranges[b, t_b - 1, -1]
        assert ranges[b].max() <= max(u_b, width - 1)


@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_ranges_are_valid(s_range):
    torch.manual_seed(s_range)
    for _ in range(5):
        am, lm, targets, tl, ul = make_inputs(6, 15, 9, 11, scale=3.0)
        ul = torch.minimum(ul, (s_range - 1) * tl)  # a path fits in some band
        simple = rnnt_loss_simple(lm, am, targets, tl, ul)
        ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, s_range)
        assert ranges.shape == (6, 15, min(s_range, 10)) and ranges.dtype == torch.long
        check_ranges(ranges, tl, ul, s_range)
        # arbitrary (non-lattice) posteriors get valid ranges too
        noise = torch.rand(6, 15, 10) ** 8
        check_ranges(prune_ranges(noise, noise.flip(1), tl, ul, s_range), tl, ul, s_range)
        logits = torch.randn(6, 15, ranges.shape[-1], 11, requires_grad=True)
        loss = rnnt_loss_pruned(logits, targets, ranges, tl, ul, reduction="none")
        assert torch.isfinite(loss).all()


def peaked(frames, n_tok, margin=8.0, seed=0):
    """am (1, T, V), lm (1, U + 1, V), targets whose simple joint follows one alignment: token
    u + 1 at frame emit_frames[u]; every move on it beats the other move by >= margin nats."""
    gen = torch.Generator().manual_seed(seed)
    vocab = n_tok + 2
    targets = torch.randperm(vocab - 1, generator=gen)[:n_tok] + 1  # distinct, non-blank
    emit_frames = torch.randint(0, frames, (n_tok,), generator=gen).sort().values
    am = torch.full((frames, vocab), -2 * margin)
    am[:, 0] = 0.0
    am[emit_frames, targets] = margin
    lm = torch.full((n_tok + 1, vocab), -2 * margin)
    lm[:, 0] = 0.0
    lm[torch.arange(n_tok), targets] = margin
    am = am + 0.1 * torch.randn(am.shape, generator=gen)
    lm = lm + 0.1 * torch.randn(lm.shape, generator=gen)
    return am[None], lm[None], targets[None], emit_frames


@pytest.mark.parametrize("seed", range(4))
def test_band_holds_the_best_path_on_a_peaked_case(seed):
    frames, n_tok = 30, 20
    am, lm, targets, emit_frames = peaked(frames, n_tok, seed=seed)
    tl, ul = torch.tensor([frames]), torch.tensor([n_tok])
    simple = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none")
    ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, 4)
    for t in range(frames):  # the path is at u = tokens emitted before t .. those up to t
        first, last = int((emit_frames < t).sum()), int((emit_frames <= t).sum())
        if last - first + 1 <= 4:
            assert ranges[0, t, 0] <= first and last <= ranges[0, t, -1], t
    # the band then loses almost nothing of the simple joint's probability
    logits = (am[:, :, None] + lm[:, None]).expand(-1, -1, n_tok + 1, -1)
    band = logits.gather(2, ranges[..., None].expand(-1, -1, -1, logits.shape[-1]))
    pruned = rnnt_loss_pruned(band, targets, ranges, tl, ul, reduction="none")
    if all(int((emit_frames == t).sum()) < 4 for t in range(frames)):
        torch.testing.assert_close(pruned, simple.loss, rtol=1e-3, atol=1e-3)
    assert pruned >= simple.loss - 1e-4  # a band holds fewer paths


def pruned_step(am, lm, targets, tl, ul, joiner, s_range=5):
    """Simple loss + ranges + joiner on the band + pruned loss; returns both losses and ranges."""
    simple = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none")
    ranges = prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, s_range)
    pair = do_rnnt_pruning(am, lm, ranges)
    logits = joiner(torch.tanh(pair.am + pair.lm))
    pruned = rnnt_loss_pruned(logits, targets, ranges, tl, ul, reduction="none")
    return simple.loss, pruned, ranges


@pytest.mark.parametrize("autocast", [False, True])
def test_long_sequence_is_finite(autocast):
    torch.manual_seed(0)
    frames, n_tok, vocab = 500, 200, 8
    am, lm, targets, tl, ul = make_inputs(2, frames, n_tok, vocab, scale=3.0)
    joiner = torch.nn.Linear(vocab, vocab)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        simple, pruned, _ = pruned_step(am, lm, targets, tl, ul, joiner)
        total = (pruned + 0.5 * simple).sum()
    assert torch.isfinite(simple).all() and torch.isfinite(pruned).all()
    assert (pruned > 0).all() and (simple > 0).all()
    total.backward()
    for p in (am, lm, joiner.weight, joiner.bias):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_simple_loss_under_autocast_matches_fp32():
    am, lm, targets, tl, ul = make_inputs(3, 40, 10, 32, scale=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none").loss
    ref = rnnt_loss_simple(lm, am, targets, tl, ul, reduction="none").loss
    torch.testing.assert_close(cast, ref)  # the normalizer's matmul stays fp32


def test_padded_batch_equals_each_alone():
    torch.manual_seed(3)
    frames, n_tok, vocab, s_range = 14, 6, 9, 3
    am, lm, targets, tl, ul = make_inputs(4, frames, n_tok, vocab, scale=2.0)
    tl[1:], ul[1:] = torch.tensor([1, 9, 5]), torch.tensor([2, 2, 4])
    joiner = torch.nn.Linear(vocab, vocab)
    simple, pruned, ranges = pruned_step(am, lm, targets, tl, ul, joiner, s_range)
    grads = torch.autograd.grad((simple + pruned).sum(), (am, lm))
    for b in range(4):
        t_b, u_b = int(tl[b]), int(ul[b])
        am_b = am.detach()[b : b + 1, :t_b].clone().requires_grad_()
        lm_b = lm.detach()[b : b + 1, : u_b + 1].clone().requires_grad_()
        args = (targets[b : b + 1, :u_b], tl[b : b + 1], ul[b : b + 1])
        simple_b, pruned_b, ranges_b = pruned_step(am_b, lm_b, *args, joiner, s_range)
        torch.testing.assert_close(simple[b : b + 1], simple_b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pruned[b : b + 1], pruned_b, rtol=1e-5, atol=1e-5)
        assert torch.equal(ranges[b, :t_b], ranges_b[0])
        grads_b = torch.autograd.grad((simple_b + pruned_b).sum(), (am_b, lm_b))
        torch.testing.assert_close(grads[0][b, :t_b], grads_b[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[1][b, : u_b + 1], grads_b[1][0], rtol=1e-5, atol=1e-5)
        assert (grads[0][b, t_b:] == 0).all()  # padding frames get no gradient


def test_errors_name_the_argument():
    am, lm, targets, tl, ul = make_inputs(2, 5, 3, 4)
    simple = rnnt_loss_simple(lm, am, targets, tl, ul)
    with pytest.raises(ValueError, match="s_range must be >= 2"):
        prune_ranges(simple.blank_posterior, simple.emit_posterior, tl, ul, 1)
    with pytest.raises(ValueError, match="am must be"):
        rnnt_loss_simple(lm, am[:, :, :3], targets, tl, ul)
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss_simple(lm, am, targets, tl, ul, reduction="avg")
    with pytest.raises(ValueError, match="wider than the lattice"):
        ranges = torch.arange(5).expand(2, 5, 5)
        rnnt_loss_pruned(torch.randn(2, 5, 5, 4), targets, ranges, tl, ul)
