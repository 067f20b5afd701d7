"""Joint CTC/attention search on tiny Seq2SeqModels: CTC prefix scores against brute force,
beam search against greedy, batched against alone, and recovery of overfit targets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.recipes import tiny_recipe
from mamba_asr.decode.seq2seq import CTCPrefixScorer, seq2seq_beam_search, seq2seq_greedy
from mamba_asr.models.factory import build_model
from mamba_asr.models.seq2seq import Seq2SeqModel

BLANK, BOS, EOS = 0, 1, 2
VOCAB, N_MELS = 9, 80
TARGETS = [[3, 4, 5, 6], [7, 3, 8], [5, 5, 4]]  # the second-last has a repeated label


def tiny_model(decoder: str = "transformer", seed: int = 0) -> Seq2SeqModel:
    torch.manual_seed(seed)
    cfg = tiny_recipe(
        "seq2seq", f"model.decoder_module={decoder}", f"model.vocab_size={VOCAB}",
        "model.label_smoothing=0.0",
    ).model  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model, Seq2SeqModel)
    return model.eval()


@pytest.fixture(scope="module")
def overfit() -> tuple[Seq2SeqModel, Tensor, Tensor]:
    """A tiny model trained to map three random feature sequences to TARGETS."""
    model = tiny_model().train()
    torch.manual_seed(1)
    feats = torch.randn(3, 48, N_MELS)
    feat_lengths = torch.tensor([48, 40, 44])  # 11, 9, 10 encoder frames
    targets = torch.tensor([t + [0] * (4 - len(t)) for t in TARGETS])
    target_lengths = torch.tensor([len(t) for t in TARGETS])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = model.loss(feats, feat_lengths, targets, target_lengths).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), feats, feat_lengths


def random_batch(batch: int = 3) -> tuple[Tensor, Tensor]:
    feats = torch.randn(batch, 40, N_MELS)
    return feats, torch.tensor([40, 27, 33, 20][:batch])


# --- CTC prefix scores -------------------------------------------------------------------------


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(c for i, c in enumerate(path) if c != BLANK and (i == 0 or path[i - 1] != c))


def brute_prefix_scores(log_probs: Tensor, prefix: tuple[int, ...]) -> Tensor:
    """log_probs: (T, V) -> (V,): log P(prefix + (c,) starts the output); for eos,
    log P(output == prefix); blank -inf. By enumerating every alignment."""
    frames, vocab = log_probs.shape
    starts, whole = torch.full((vocab,), -math.inf, dtype=torch.float64), -math.inf
    for path in itertools.product(range(vocab), repeat=frames):
        score = float(sum(log_probs[t, c] for t, c in enumerate(path)))
        out = collapse(path)
        if out == prefix:
            whole = float(torch.logaddexp(torch.tensor(whole), torch.tensor(score)))
        if len(out) > len(prefix) and out[: len(prefix)] == prefix:
            c = out[len(prefix)]
            starts[c] = torch.logaddexp(starts[c], torch.tensor(score, dtype=torch.float64))
    starts[EOS], starts[BLANK] = whole, -math.inf
    return starts


def test_ctc_prefix_scorer_matches_brute_force() -> None:
    """Two utterances (4 and 3 frames) x two hypotheses, three steps, every token a candidate;
    the paths include a repeated label (3, 3) and a prefix longer than the shorter utterance."""
    vocab, lengths = 5, torch.tensor([4, 3])
    log_probs = (torch.randn(2, 4, vocab) * 1.5).log_softmax(-1).double()
    scorer = CTCPrefixScorer(log_probs, lengths, hyps_per_utt=2, blank=BLANK, eos=EOS)
    state = scorer.initial_state()
    cands = torch.arange(vocab).expand(4, vocab)  # (N, K) = (4, 5)
    prefixes = [(), (), (), ()]
    for step, picks in enumerate([[3, 4, 3, 4], [3, 3, 3, 3], [4, 3, 4, 4]]):
        psi, r = scorer.score(state, cands, num_labels=step)
        for n, prefix in enumerate(prefixes):
            b = n // 2
            want = brute_prefix_scores(log_probs[b, : lengths[b]], prefix)
            torch.testing.assert_close(psi[n].double(), want, rtol=1e-5, atol=1e-5)
        pick = torch.tensor(picks)
        state = scorer.select(psi, r, cands, torch.arange(4), pick)
        prefixes = [p + (c,) for p, c in zip(prefixes, picks, strict=True)]


# --- beam search ---------------------------------------------------------------------------------


@torch.no_grad()
def ctc_log_prob(
    model: Seq2SeqModel, feats: Tensor, feat_lengths: Tensor, tokens: list[int]
) -> float:
    """log P_ctc(tokens | one utterance) from torch's CTC loss."""
    enc = model.encode(feats[None], feat_lengths[None])
    lp = model.ctc_log_probs(enc.memory).transpose(0, 1)  # (T, 1, V)
    target = torch.tensor([tokens], dtype=torch.long)
    loss = F.ctc_loss(lp, target, enc.lengths, torch.tensor([len(tokens)]), blank=BLANK,
                      reduction="sum", zero_infinity=False)  # fmt: skip
    return -float(loss)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.4, 1.0])
def test_beam_search_recovers_overfit_targets(overfit, ctc_weight: float) -> None:
    model, feats, feat_lengths = overfit
    hyps = seq2seq_beam_search(model, feats, feat_lengths, beam_size=4, ctc_weight=ctc_weight)
    assert [h[0].tokens for h in hyps] == TARGETS
    assert all(len(h) == 4 for h in hyps)
    for nbest in hyps:
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    greedy = seq2seq_greedy(model, feats, feat_lengths, ctc_weight=ctc_weight)
    assert [h.tokens for h in greedy] == TARGETS


@pytest.mark.parametrize("ctc_weight", [0.4, 1.0])
def test_joint_scores_are_the_weighted_parts(overfit, ctc_weight: float) -> None:
    """score * (len + 1) = (1 - w) * attention + w * log P_ctc(tokens), P_ctc from torch."""
    model, feats, feat_lengths = overfit
    hyps = seq2seq_beam_search(model, feats, feat_lengths, beam_size=3, ctc_weight=ctc_weight)
    for b, nbest in enumerate(hyps):
        for h in nbest:
            ctc = ctc_log_prob(model, feats[b], feat_lengths[b], h.tokens)
            assert h.ctc_score == pytest.approx(ctc, abs=1e-3)
            attention = 0.0 if ctc_weight == 1.0 else (1 - ctc_weight) * h.attention_score
            joint = attention + ctc_weight * ctc
            assert h.score * (len(h.tokens) + 1) == pytest.approx(joint, abs=1e-3)


@pytest.mark.parametrize("decoder", ["transformer", "mamba"])
def test_beam_one_without_ctc_equals_greedy(decoder: str) -> None:
    """An untrained model rambles until the length limit forces eos: both paths agree."""
    model = tiny_model(decoder)
    with torch.no_grad():
        model.seq_lin.bias[EOS] -= 4.0  # eos unlikely: long outputs, some cut by the limit
    feats, feat_lengths = random_batch()
    greedy = seq2seq_greedy(model, feats, feat_lengths)
    beam = seq2seq_beam_search(model, feats, feat_lengths, beam_size=1, ctc_weight=0.0,
                               length_normalization=False)  # fmt: skip
    assert [h[0].tokens for h in beam] == [h.tokens for h in greedy]
    for b, g in zip(beam, greedy, strict=True):
        assert b[0].attention_score == pytest.approx(g.attention_score, abs=1e-4)
        assert b[0].score == pytest.approx(g.score, abs=1e-4)
    assert max(len(h.tokens) for h in greedy) > 3


@pytest.mark.parametrize("decoder", ["transformer", "mamba"])
def test_batched_equals_alone(decoder: str) -> None:
    model = tiny_model(decoder)
    feats, feat_lengths = random_batch()
    batched = seq2seq_beam_search(model, feats, feat_lengths, beam_size=3, max_decode_ratio=0.5)
    for b in range(feats.shape[0]):
        length = int(feat_lengths[b])
        alone = seq2seq_beam_search(
            model, feats[b : b + 1, :length], feat_lengths[b : b + 1], beam_size=3,
            max_decode_ratio=0.5,
        )[0]  # fmt: skip
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        for x, y in zip(batched[b], alone, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-4)


def test_length_limit_and_never_special_tokens() -> None:
    model = tiny_model()
    feats, feat_lengths = random_batch(2)
    enc_lengths = model.encode(feats, feat_lengths).lengths
    for ratio in (0.3, 1.0):
        hyps = seq2seq_beam_search(model, feats, feat_lengths, beam_size=3, max_decode_ratio=ratio)
        for nbest, frames in zip(hyps, enc_lengths.tolist(), strict=True):
            for h in nbest:
                assert 0 < len(h.tokens) <= max(1, int(ratio * frames))
                assert not {BLANK, BOS, EOS} & set(h.tokens)


@pytest.mark.parametrize(
    "kwargs, option",
    [({"beam_size": 0}, "beam_size"), ({"ctc_weight": 1.5}, "ctc_weight"),
     ({"max_decode_ratio": 0.0}, "max_decode_ratio")],
)  # fmt: skip
def test_bad_options(kwargs: dict, option: str) -> None:
    model = tiny_model()
    feats, feat_lengths = random_batch(1)
    with pytest.raises(ValueError, match=option):
        seq2seq_beam_search(model, feats, feat_lengths, **kwargs)
