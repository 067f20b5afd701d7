"""Tests for the CTC loss wrapper and the CTC model: values, padding, training, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.batches import padded_batch
from helpers.standins import BiMambaEncoder, PairFrontEnd
from mamba_asr.models.ctc import CTCModel, CTCOutput
from mamba_asr.models.losses import LossOutput, ctc_loss

N_MELS, D_MODEL, VOCAB = 6, 16, 7


def make_model(seed: int = 0) -> CTCModel:
    torch.manual_seed(seed)
    return CTCModel(PairFrontEnd(N_MELS, D_MODEL), BiMambaEncoder(D_MODEL), D_MODEL, VOCAB)


def make_batch(
    feat_lengths: list[int], target_lengths: list[int], n_mels: int = N_MELS, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features and targets (never blank) with garbage in the padding."""
    return padded_batch(feat_lengths, target_lengths, n_mels, VOCAB, 1, True, seed)


def losses_alone(
    model: CTCModel, feats: Tensor, f_len: Tensor, targets: Tensor, t_len: Tensor
) -> Tensor:
    """(B,) losses of each utterance run alone, cut to its own lengths."""
    losses = [
        model.loss(feats[b : b + 1, :f], f_len[b : b + 1], targets[b : b + 1, :t], t_len[b : b + 1])
        for b, (f, t) in enumerate(zip(f_len.tolist(), t_len.tolist(), strict=True))
    ]
    return torch.cat([result.loss.reshape(1) for result in losses])


# --- ctc_loss -----------------------------------------------------------------------------------


def hand_case() -> tuple[Tensor, Tensor, Tensor, Tensor, list[float]]:
    """Two utterances, blank 0, label 1, with their CTC negative log-likelihoods by hand.

    1: 2 frames, target [1]: paths (1,1), (0,1), (1,0): P = .4*.7 + .6*.7 + .4*.3 = .82.
    2: 3 frames, target [1, 1]: the only path is (1,0,1): P = .8 * .5 * .9 = .36.
    """
    probs = torch.tensor(
        [
            [[0.6, 0.4], [0.3, 0.7], [0.01, 0.99]],  # the third frame is padding
            [[0.2, 0.8], [0.5, 0.5], [0.1, 0.9]],
        ]
    )
    targets = torch.tensor([[1, 0], [1, 1]])
    return probs.log(), torch.tensor([2, 3]), targets, torch.tensor([1, 2]), [0.82, 0.36]


def test_ctc_loss_by_hand() -> None:
    log_probs, in_len, targets, tgt_len, probs = hand_case()
    nll = torch.tensor([-math.log(p) for p in probs])
    got = ctc_loss(log_probs, in_len, targets, tgt_len, reduction="none")
    torch.testing.assert_close(got, nll)
    torch.testing.assert_close(ctc_loss(log_probs, in_len, targets, tgt_len), nll.sum() / 2)
    torch.testing.assert_close(ctc_loss(log_probs, in_len, targets, tgt_len, 0, "sum"), nll.sum())
    per_token = (nll / tgt_len).mean()
    torch.testing.assert_close(ctc_loss(log_probs, in_len, targets, tgt_len, 0, "mean"), per_token)


def test_ctc_loss_other_blank_and_dtype() -> None:
    log_probs, in_len, targets, tgt_len, probs = hand_case()
    flipped = log_probs.flip(-1).double()  # blank is now index 1, the label index 0
    got = ctc_loss(flipped, in_len, 1 - targets, tgt_len, blank=1, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([-math.log(p) for p in probs]))


def test_ctc_loss_impossible_target_is_zero() -> None:
    log_probs, in_len, targets, tgt_len, probs = hand_case()
    targets[0, 1] = 1
    tgt_len = torch.tensor([2, 2])  # (1, 1) needs 3 frames; utterance 0 has 2
    log_probs.requires_grad_()
    got = ctc_loss(log_probs, in_len, targets, tgt_len, reduction="none")
    assert got[0] == 0 and torch.isclose(got[1], torch.tensor(-math.log(probs[1])))
    got.sum().backward()
    assert torch.equal(log_probs.grad[0], torch.zeros_like(log_probs.grad[0]))


def test_ctc_loss_rejects_empty_targets() -> None:
    log_probs, in_len, targets, _, _ = hand_case()
    with pytest.raises(ValueError, match=r"empty.*\[1\]"):
        ctc_loss(log_probs, in_len, targets, torch.tensor([1, 0]))


def test_ctc_loss_rejects_unknown_reduction() -> None:
    log_probs, in_len, targets, tgt_len, _ = hand_case()
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(log_probs, in_len, targets, tgt_len, reduction="average")


# --- CTCModel -----------------------------------------------------------------------------------


def test_forward_shapes() -> None:
    model = make_model().eval()
    feats, f_len, _, _ = make_batch([13, 8, 5], [3, 2, 1])
    out = model(feats, f_len)
    assert isinstance(out, CTCOutput)
    assert out.log_probs.shape == (3, 6, VOCAB) and out.log_probs.dtype == torch.float32
    assert out.lengths.tolist() == [6, 4, 2]
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(3, 6))


def test_loss_matches_manual_ctc() -> None:
    model = make_model().eval()
    feats, f_len, targets, t_len = make_batch([13, 8, 9], [3, 2, 1])
    with torch.no_grad():
        result = model.loss(feats, f_len, targets, t_len)
        out = model(feats, f_len)
    assert isinstance(result, LossOutput) and result.attention is None
    manual = F.ctc_loss(out.log_probs.transpose(0, 1), targets, out.lengths, t_len, reduction="sum")
    torch.testing.assert_close(result.loss, manual / 3)
    torch.testing.assert_close(result.ctc, result.loss)
    assert torch.isfinite(result.loss) and result.loss > 0


def test_padded_batch_equals_each_alone() -> None:
    """Per-utterance losses of a padded batch equal each utterance's loss alone; so the
    batch's 'sum' loss is the sum of the utterances' losses."""
    model = make_model().eval()
    feats, f_len, targets, t_len = make_batch([14, 7, 10, 12], [4, 2, 3, 1])
    with torch.no_grad():
        per_utt = model.loss(feats, f_len, targets, t_len, reduction="none").loss
        alone = losses_alone(model, feats, f_len, targets, t_len)
        total = model.loss(feats, f_len, targets, t_len, reduction="sum").loss
    torch.testing.assert_close(per_utt, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, alone.sum(), atol=1e-5, rtol=1e-5)


def test_training_steps_reduce_the_loss() -> None:
    model = make_model().train()
    feats, f_len, targets, t_len = make_batch([14, 10], [4, 3])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = model.loss(feats, f_len, targets, t_len).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_reaches_every_parameter() -> None:
    model = make_model().train()
    feats, f_len, targets, t_len = make_batch([12, 9], [3, 2])
    model.loss(feats, f_len, targets, t_len).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().max() > 0, name


def test_head_device_dtype_and_options() -> None:
    model = CTCModel(nn.Identity(), nn.Identity(), 8, 5, device="meta", dtype=torch.float64)
    assert model.ctc_lin.weight.device.type == "meta"
    assert model.ctc_lin.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="blank"):
        CTCModel(nn.Identity(), nn.Identity(), 8, 5, blank=5)
    with pytest.raises(ValueError, match="empty"):
        feats, f_len, targets, _ = make_batch([12, 9], [3, 2])
        make_model().loss(feats, f_len, targets, torch.tensor([3, 0]))


def test_end_to_end_with_conv_frontend_and_conmamba() -> None:
    """The real ConvFrontEnd + ConMambaEncoder: shapes, padding, one training step."""
    frontend_mod = pytest.importorskip("mamba_asr.modules.frontend", reason="frontend not built")
    encoders = pytest.importorskip("mamba_asr.models.encoders", reason="encoders not built")
    torch.manual_seed(0)
    frontend = frontend_mod.ConvFrontEnd(n_mels=80, d_model=D_MODEL, channels=(4, 4))
    encoder = encoders.ConMambaEncoder(
        D_MODEL, num_layers=1, d_ffn=32, kernel_size=5, mamba={"d_state": 4}
    )
    model = CTCModel(frontend, encoder, D_MODEL, VOCAB).eval()
    feats, f_len, targets, t_len = make_batch([40, 23], [5, 3], n_mels=80)
    with torch.no_grad():
        out = model(feats, f_len)
        per_utt = model.loss(feats, f_len, targets, t_len, reduction="none").loss
        alone = losses_alone(model, feats, f_len, targets, t_len)
    assert out.log_probs.shape == (2, 10, VOCAB) and out.lengths.tolist() == [10, 6]
    torch.testing.assert_close(per_utt, alone, atol=1e-4, rtol=1e-4)
    model.train()
    loss = model.loss(feats, f_len, targets, t_len).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
