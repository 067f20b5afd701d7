"""Tests for the label-smoothed loss and the joint CTC/attention model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.batches import padded_batch
from helpers.standins import BiMambaEncoder, PairFrontEnd
from mamba_asr.models.decoders import DECODERS
from mamba_asr.models.losses import LossOutput, ctc_loss, label_smoothed_nll
from mamba_asr.models.seq2seq import Seq2SeqModel, Seq2SeqOutput, add_bos_eos

N_MELS, D_MODEL, VOCAB = 6, 16, 11
PAD, BOS, EOS = 0, 1, 2
NAMES = sorted(DECODERS)


# --- label_smoothed_nll -------------------------------------------------------------------------


def speechbrain_kldiv(
    log_probs: Tensor, targets: Tensor, smoothing: float, pad_index: int
) -> Tensor:
    """SpeechBrain's ``kldiv_loss(..., label_smoothing, pad_idx, reduction="batchmean")``,
    written out: the full smoothed distribution, ``F.kl_div``, pad targets ignored, sum / B."""
    batch, _, vocab = log_probs.shape
    flat, tgt = log_probs.reshape(-1, vocab), targets.reshape(-1)
    q = torch.full_like(flat, smoothing / (vocab - 1))
    ignore = tgt == pad_index
    q.scatter_(1, tgt.masked_fill(ignore, 0)[:, None], 1 - smoothing)
    loss = F.kl_div(flat, q, reduction="none").masked_fill(ignore[:, None], 0)
    return loss.sum() / batch


def test_label_smoothed_nll_by_hand() -> None:
    """V = 3, smoothing 0.3: q = 0.7 on the target, 0.15 elsewhere; KL = sum q log(q / p)."""
    probs = torch.tensor(
        [
            [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]],  # the third step is padding
            [[0.1, 0.1, 0.8], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]],  # two steps of padding
        ]
    )
    targets = torch.tensor([[1, 0, 2], [2, 1, 1]])  # garbage (valid ids) in the padding

    def kl(p: list[float], target: int) -> float:
        q = [0.7 if v == target else 0.15 for v in range(3)]
        return sum(qv * math.log(qv / pv) for qv, pv in zip(q, p, strict=True))

    utt0 = kl([0.2, 0.5, 0.3], 1) + kl([0.6, 0.3, 0.1], 0)
    utt1 = kl([0.1, 0.1, 0.8], 2)
    lengths = torch.tensor([2, 1])
    got = label_smoothed_nll(probs.log(), targets, lengths, smoothing=0.3, reduction="none")
    torch.testing.assert_close(got, torch.tensor([utt0, utt1]))
    batchmean = label_smoothed_nll(probs.log(), targets, lengths, smoothing=0.3)
    torch.testing.assert_close(batchmean, torch.tensor((utt0 + utt1) / 2))
    mean = label_smoothed_nll(probs.log(), targets, lengths, 0.3, reduction="mean")
    torch.testing.assert_close(mean, torch.tensor((utt0 / 2 + utt1) / 2))
    total = label_smoothed_nll(probs.log(), targets, lengths, 0.3, reduction="sum")
    torch.testing.assert_close(total, torch.tensor(utt0 + utt1))


@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_label_smoothed_nll_equals_speechbrain(smoothing: float) -> None:
    """Padded with the pad id (as SpeechBrain's batches are), both give the same loss; a real
    target equal to the pad id (index 0: pad, blank and unk at once) is ignored by both."""
    torch.manual_seed(3)
    lengths = torch.tensor([5, 2, 4])
    log_probs = torch.randn(3, 5, VOCAB).log_softmax(-1)
    targets = torch.randint(1, VOCAB, (3, 5))
    targets[0, 1] = PAD
    targets = targets.masked_fill(torch.arange(5)[None, :] >= lengths[:, None], PAD)
    ours = label_smoothed_nll(log_probs, targets, lengths, smoothing, pad_index=PAD)
    torch.testing.assert_close(ours, speechbrain_kldiv(log_probs, targets, smoothing, PAD))
    if smoothing == 0.0:  # the plain NLL of the valid, non-pad targets, over the batch size
        valid = targets != PAD
        nll = -log_probs.gather(-1, targets[..., None])[..., 0][valid].sum() / 3
        torch.testing.assert_close(ours, nll)


def test_label_smoothed_nll_ignores_padding_values_and_bad_options() -> None:
    torch.manual_seed(4)
    lengths = torch.tensor([3, 1])
    log_probs = torch.randn(2, 3, VOCAB).log_softmax(-1).requires_grad_()
    targets = torch.randint(0, VOCAB, (2, 3))
    loss = label_smoothed_nll(log_probs, targets, lengths)
    other = targets.clone()
    other[1, 1:] = (other[1, 1:] + 1) % VOCAB
    torch.testing.assert_close(label_smoothed_nll(log_probs, other, lengths), loss)
    loss.backward()
    assert torch.equal(log_probs.grad[1, 1:], torch.zeros_like(log_probs.grad[1, 1:]))
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothed_nll(log_probs, targets, lengths, smoothing=1.0)
    with pytest.raises(ValueError, match="reduction"):
        label_smoothed_nll(log_probs, targets, lengths, reduction="batch")


# --- model --------------------------------------------------------------------------------------


def make_decoder(name: str) -> nn.Module:
    return DECODERS[name](
        VOCAB, D_MODEL, num_layers=2, nhead=4, d_ffn=32, dropout=0.1, mamba={"d_state": 4}
    )


def make_model(name: str, seed: int = 0, **kwargs: object) -> Seq2SeqModel:
    torch.manual_seed(seed)
    frontend, encoder = PairFrontEnd(N_MELS, D_MODEL), BiMambaEncoder(D_MODEL)
    return Seq2SeqModel(frontend, encoder, make_decoder(name), D_MODEL, VOCAB, **kwargs)


def make_batch(
    feat_lengths: list[int], target_lengths: list[int], n_mels: int = N_MELS, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features and targets (ids 3.., never pad/bos/eos) with garbage in the padding; targets
    keep random ids in their padding."""
    return padded_batch(feat_lengths, target_lengths, n_mels, VOCAB, 3, False, seed)


def losses_alone(
    model: Seq2SeqModel, feats: Tensor, f_len: Tensor, targets: Tensor, t_len: Tensor
) -> list[LossOutput]:
    """Each utterance's losses run alone, cut to its own lengths."""
    return [
        model.loss(feats[b : b + 1, :f], f_len[b : b + 1], targets[b : b + 1, :t], t_len[b : b + 1])
        for b, (f, t) in enumerate(zip(f_len.tolist(), t_len.tolist(), strict=True))
    ]


def test_add_bos_eos() -> None:
    targets = torch.tensor([[5, 6, 7], [8, 9, 99]])  # 99: garbage in the padding
    io = add_bos_eos(targets, torch.tensor([3, 1]), bos=BOS, eos=EOS, pad=PAD)
    assert io.inputs.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert io.targets.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert io.lengths.tolist() == [4, 2]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes(name: str) -> None:
    model = make_model(name).eval()
    feats, f_len, targets, t_len = make_batch([13, 8, 5], [4, 2, 1])
    out = model(feats, f_len, targets, t_len)
    assert isinstance(out, Seq2SeqOutput)
    assert out.encoder_out.shape == (3, 6, D_MODEL) and out.lengths.tolist() == [6, 4, 2]
    assert out.ctc_log_probs.shape == (3, 6, VOCAB) and out.ctc_log_probs.dtype == torch.float32
    assert out.decoder_log_probs.shape == (3, 5, VOCAB)
    assert out.decoder.lengths.tolist() == [5, 3, 2]
    torch.testing.assert_close(out.decoder_log_probs.exp().sum(-1), torch.ones(3, 5))


@pytest.mark.parametrize("name", NAMES)
def test_loss_parts_match_manual_computation(name: str) -> None:
    model = make_model(name, ctc_weight=0.3, label_smoothing=0.1).eval()
    feats, f_len, targets, t_len = make_batch([13, 8, 9], [4, 2, 3])
    with torch.no_grad():
        result = model.loss(feats, f_len, targets, t_len)
        out = model(feats, f_len, targets, t_len)
    ctc = ctc_loss(out.ctc_log_probs, out.lengths, targets, t_len)
    io = out.decoder
    attention = speechbrain_kldiv(out.decoder_log_probs, io.targets, 0.1, PAD)
    torch.testing.assert_close(result.ctc, ctc)
    torch.testing.assert_close(result.attention, attention)
    torch.testing.assert_close(result.loss, 0.3 * ctc + 0.7 * attention)
    assert torch.isfinite(result.loss)


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_a_prefix_matches_teacher_forcing(name: str) -> None:
    model = make_model(name).eval()
    feats, f_len, targets, t_len = make_batch([13, 9], [4, 4])
    with torch.no_grad():
        out = model(feats, f_len, targets, t_len)
        enc = model.encode(feats, f_len)
        prefix = out.decoder.inputs[:, :3]
        step = model.decode(prefix, torch.tensor([3, 3]), enc.memory, enc.lengths)
    torch.testing.assert_close(step, out.decoder_log_probs[:, :3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_alone(name: str) -> None:
    """In eval mode a padded batch's per-utterance losses (both parts) equal each utterance's
    losses alone, and its 'sum' loss is their sum."""
    model = make_model(name).eval()
    feats, f_len, targets, t_len = make_batch([14, 7, 10, 12], [4, 2, 3, 1])
    with torch.no_grad():
        batch = model.loss(feats, f_len, targets, t_len, reduction="none")
        total = model.loss(feats, f_len, targets, t_len, reduction="sum")
        alone = losses_alone(model, feats, f_len, targets, t_len)
    for part in ("loss", "ctc", "attention"):
        each = torch.stack([getattr(result, part) for result in alone])  # batchmean of 1 = sum
        torch.testing.assert_close(getattr(batch, part), each, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(getattr(total, part), each.sum(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_reduce_the_loss(name: str) -> None:
    model = make_model(name).train()
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


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = make_model(name).train()
    feats, f_len, targets, t_len = make_batch([12, 9], [3, 2])
    model.loss(feats, f_len, targets, t_len).loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().max() > 0, param_name


@pytest.mark.parametrize(
    ("option", "value"),
    [("ctc_weight", 1.5), ("label_smoothing", 1.0), ("bos", VOCAB), ("eos", -1), ("pad", EOS)],
)
def test_bad_options_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        make_model("transformer", **{option: value})


def test_heads_device_dtype_and_empty_targets() -> None:
    decoder = DECODERS["transformer"](VOCAB, 8, 1, nhead=2, d_ffn=16)
    model = Seq2SeqModel(
        nn.Identity(), nn.Identity(), decoder, 8, VOCAB, device="meta", dtype=torch.float64
    )
    for head in (model.ctc_lin, model.seq_lin):
        assert head.weight.device.type == "meta" and head.weight.dtype == torch.float64
    feats, f_len, targets, _ = make_batch([12, 9], [3, 2])
    with pytest.raises(ValueError, match="empty"):
        make_model("mamba").loss(feats, f_len, targets, torch.tensor([0, 2]))


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_with_conv_frontend_and_conmamba(name: str) -> None:
    """The real ConvFrontEnd + ConMambaEncoder with each decoder: padding, one training step."""
    frontend_mod = pytest.importorskip("mamba_asr.modules.frontend", reason="frontend not built")
    encoders = pytest.importorskip("mamba_asr.models.encoders", reason="encoders not built")
    torch.manual_seed(0)
    frontend = frontend_mod.ConvFrontEnd(n_mels=80, d_model=D_MODEL, channels=(4, 4))
    encoder = encoders.ConMambaEncoder(
        D_MODEL, num_layers=1, d_ffn=32, kernel_size=5, mamba={"d_state": 4}
    )
    model = Seq2SeqModel(frontend, encoder, make_decoder(name), D_MODEL, VOCAB).eval()
    feats, f_len, targets, t_len = make_batch([40, 23], [5, 3], n_mels=80)
    with torch.no_grad():
        out = model(feats, f_len, targets, t_len)
        batch = model.loss(feats, f_len, targets, t_len, reduction="sum")
        alone = losses_alone(model, feats, f_len, targets, t_len)
    assert out.encoder_out.shape == (2, 10, D_MODEL) and out.lengths.tolist() == [10, 6]
    assert out.decoder_log_probs.shape == (2, 6, VOCAB)
    expected = torch.stack([result.loss for result in alone]).sum()
    torch.testing.assert_close(batch.loss, expected, atol=1e-4, rtol=1e-4)
    model.train()
    loss = model.loss(feats, f_len, targets, t_len).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
