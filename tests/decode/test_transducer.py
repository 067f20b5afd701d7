"""Transducer greedy and modified beam search, and streaming decoding, on small fake models.

The fakes implement the interface of ``mamba_asr.models.transducer.TransducerModel`` (encode,
init_state / forward_chunk, predictor with init_state, joiner with project_* and join); the last
test trains and decodes the real model when it exists.
"""

from __future__ import annotations

import itertools
import random
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from mamba_asr.decode import search as search_module
from mamba_asr.decode.search import SEARCHES, DecodingOptions, decode_batch
from mamba_asr.decode.streaming import TransducerStreamer
from mamba_asr.decode.transducer import (
    TransducerHypothesis,
    transducer_beam_search,
    transducer_greedy,
)
from mamba_asr.lm import NgramLM
from mamba_asr.models.seq2seq import Encoded

V, M, P, J, C = 5, 8, 6, 7, 80  # vocabulary, d_model, predictor out, joiner hidden, mels


class LSTMPredictor(nn.Module):
    """State (h, c), each (1, B, P): the batch is not the first dim."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.lstm = nn.Embedding(V, P), nn.LSTM(P, P, batch_first=True)

    def init_state(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        return torch.zeros(1, batch, P, device=device), torch.zeros(1, batch, P, device=device)

    def forward(self, tokens: Tensor, pstate: tuple[Tensor, Tensor] | None = None):
        pstate = pstate or self.init_state(tokens.shape[0], tokens.device)
        return self.lstm(self.embed(tokens), pstate)


class StatelessPredictor(nn.Module):
    """State: the last ``context`` tokens (B, context), blank at the start."""

    def __init__(self, context: int = 2) -> None:
        super().__init__()
        self.context, self.embed, self.proj = context, nn.Embedding(V, P), nn.Linear(context * P, P)

    def init_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.context, dtype=torch.long, device=device)

    def forward(self, tokens: Tensor, pstate: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pstate = self.init_state(tokens.shape[0], tokens.device) if pstate is None else pstate
        full = torch.cat([pstate, tokens], dim=1)  # (B, context + U)
        windows = full.unfold(1, self.context, 1)[:, 1:]  # (B, U, context)
        return self.proj(self.embed(windows).flatten(2)), full[:, -self.context :]


class Joiner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.pred, self.out = nn.Linear(M, J), nn.Linear(P, J), nn.Linear(J, V)

    def project_encoder(self, enc: Tensor) -> Tensor:
        return self.enc(enc)

    def project_predictor(self, pred: Tensor) -> Tensor:
        return self.pred(pred)

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.out(torch.tanh(enc + pred))

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.join(self.project_encoder(enc), self.project_predictor(pred))


class EncoderState(NamedTuple):
    pending: Tensor  # (B, r, C) feature frames not yet paired, r < 2
    total: Tensor  # (B, M) running sum of the frame projections


class FakeTransducer(nn.Module):
    """Frame pairs (subsampling 2) -> linear + running sum: causal, so chunks chain exactly."""

    blank, vocab_size = 0, V

    def __init__(self, predictor: nn.Module | None = None, scale: float = 3.0) -> None:
        super().__init__()
        self.frame, self.scale = nn.Linear(2 * C, M), scale
        self.predictor, self.joiner = predictor or LSTMPredictor(), Joiner()

    def _memory(self, pairs: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
        x = self.frame(pairs.flatten(2))  # (B, t', M)
        run = total[:, None] + x.cumsum(1) * 0.1
        return self.scale * torch.tanh(x + run), run[:, -1] if x.shape[1] else total

    def encode(self, feats: Tensor, feat_lengths: Tensor) -> Encoded:
        b, t, _ = feats.shape
        pairs = feats[:, : t // 2 * 2].reshape(b, t // 2, 2, C)
        memory, _ = self._memory(pairs, feats.new_zeros(b, M))
        return Encoded(memory, feat_lengths // 2)

    def init_state(self, batch: int, device=None, dtype=None) -> EncoderState:
        return EncoderState(
            torch.zeros(batch, 0, C, device=device, dtype=dtype),
            torch.zeros(batch, M, device=device, dtype=dtype),
        )

    def forward_chunk(self, feats: Tensor, state: EncoderState) -> tuple[Tensor, EncoderState]:
        x = torch.cat([state.pending, feats], dim=1)
        b, t, _ = x.shape
        memory, total = self._memory(x[:, : t // 2 * 2].reshape(b, t // 2, 2, C), state.total)
        return memory, EncoderState(x[:, t // 2 * 2 :], total)


def fake(predictor: str = "lstm", scale: float = 3.0) -> FakeTransducer:
    pred = LSTMPredictor() if predictor == "lstm" else StatelessPredictor()
    return FakeTransducer(pred, scale).eval()


# --- a scripted model: the joiner's output is set by hand ----------------------------------------


class OneHotPredictor(nn.Module):
    """Output: one-hot of the last token (blank's column zero); state: the last token (B, 1)."""

    def init_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, 1, dtype=torch.long, device=device)

    def forward(self, tokens: Tensor, pstate: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = nn.functional.one_hot(tokens, V).float()
        out[..., 0] = 0.0
        return out, tokens[:, -1:]


class ScriptedJoiner(nn.Module):
    """logits = memory - 100 * one-hot(last token): a token never follows itself in a frame."""

    def project_encoder(self, enc: Tensor) -> Tensor:
        return enc

    def project_predictor(self, pred: Tensor) -> Tensor:
        return -100.0 * pred

    def join(self, enc: Tensor, pred: Tensor) -> Tensor:
        return enc + pred


class Scripted(nn.Module):
    blank, vocab_size = 0, V

    def __init__(self) -> None:
        super().__init__()
        self.predictor, self.joiner = OneHotPredictor(), ScriptedJoiner()


def script(*frames: dict[int, float]) -> Tensor:
    """Memory (T, V): each frame's logits; unnamed tokens 0, blank 5 unless named."""
    rows = [[d.get(0, 5.0), *(d.get(k, 0.0) for k in range(1, V))] for d in frames]
    return torch.tensor(rows)


WANT = [{1: 10}, {0: 10}, {2: 10}, {3: 10}, {1: 10, 2: 9}, {3: 10}]  # {1: 10, 2: 9}: 1 2 1 2 ...


@pytest.mark.parametrize(
    "max_symbols, tokens, frames",
    [
        (4, [1, 2, 3, 1, 2, 1, 2, 3], [0, 2, 3, 4, 4, 4, 4, 5]),
        (2, [1, 2, 3, 1, 2, 3], [0, 2, 3, 4, 4, 5]),
        (1, [1, 2, 3, 1, 3], [0, 2, 3, 4, 5]),
    ],
)
def test_greedy_follows_the_script_and_the_max_symbols_guard(
    max_symbols: int, tokens: list[int], frames: list[int]
) -> None:
    other = script({3: 10}, {3: 10}, {1: 10}, {2: 10}, {2: 10}, {2: 10})  # 3 frames valid
    memory = torch.stack([script(*WANT), other])  # (2, 6, V)
    hyps = transducer_greedy(Scripted(), memory, torch.tensor([6, 3]), max_symbols)
    assert (hyps[0].tokens, hyps[0].frames) == (tokens, frames)
    assert (hyps[1].tokens, hyps[1].frames) == ([3, 1], [0, 2])  # frozen past its length
    assert all(isinstance(h, TransducerHypothesis) and h.score <= 0.0 for h in hyps)


def test_greedy_guard_with_a_model_that_never_emits_blank() -> None:
    model = fake()
    with torch.no_grad():
        model.joiner.out.bias[0] = -1e4
    memory, lengths = torch.randn(3, 9, M), torch.tensor([9, 4, 0])
    for max_symbols in (1, 3):
        hyps = transducer_greedy(model, memory, lengths, max_symbols)
        for hyp, n in zip(hyps, lengths.tolist(), strict=True):
            assert hyp.frames == [t for t in range(n) for _ in range(max_symbols)]


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_batched_equals_each_alone(predictor: str, fusion: bool) -> None:
    model = fake(predictor)
    memory, lengths = torch.randn(3, 20, M), torch.tensor([20, 13, 7])
    lm = {"lm": tiny_lm(), "lm_weight": 0.5, "length_bonus": 0.2} if fusion else {}
    greedy = transducer_greedy(model, memory, lengths)
    beam = transducer_beam_search(model, memory, lengths, beam=3, **lm)
    assert any(len(h.tokens) > 2 for h in greedy)  # not a trivially blank model
    for i, n in enumerate(lengths.tolist()):
        alone = memory[i : i + 1, :n]
        [g] = transducer_greedy(model, alone, lengths[i : i + 1])
        assert (g.tokens, g.frames) == (greedy[i].tokens, greedy[i].frames)
        assert g.score == pytest.approx(greedy[i].score, abs=1e-4)
        [nbest] = transducer_beam_search(model, alone, lengths[i : i + 1], beam=3, **lm)
        assert [h.tokens for h in nbest] == [h.tokens for h in beam[i]]
        assert [h.score for h in nbest] == pytest.approx([h.score for h in beam[i]], abs=1e-4)


@pytest.mark.parametrize("max_symbols", [1, 2, 4])
@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_beam_1_equals_greedy_with_the_same_symbols_per_frame(
    predictor: str, max_symbols: int
) -> None:
    model = fake(predictor)
    memory, lengths = torch.randn(4, 30, M), torch.tensor([30, 25, 11, 1])
    greedy = transducer_greedy(model, memory, lengths, max_symbols_per_frame=max_symbols)
    beam = transducer_beam_search(model, memory, lengths, 1, max_symbols_per_frame=max_symbols)
    if max_symbols > 1:  # the limit is reached somewhere, so it is tested
        assert any(len(set(g.frames)) < len(g.frames) for g in greedy)
    for g, [b] in zip(greedy, beam, strict=True):
        assert (b.tokens, b.frames) == (g.tokens, g.frames)
        assert b.score == pytest.approx(g.score, abs=1e-4)


def frame_moves(max_symbols: int) -> list[tuple[int, ...]]:
    """What one frame may do: 0..max_symbols tokens (1..V-1), then a blank (0) unless the
    limit was reached."""
    moves: list[tuple[int, ...]] = []
    for n in range(max_symbols + 1):
        for toks in itertools.product(range(1, V), repeat=n):
            moves.append(toks if n == max_symbols else (*toks, 0))
    return moves


def brute_force(model: nn.Module, memory: Tensor, max_symbols: int) -> dict[tuple[int, ...], float]:
    """log P(tokens) summed over every alignment with at most max_symbols tokens per frame,
    memory (T, M)."""
    enc = model.joiner.project_encoder(memory)  # (T, J)
    paths: dict[tuple[int, ...], list[float]] = {}
    for choice in itertools.product(frame_moves(max_symbols), repeat=memory.shape[0]):
        tokens: list[int] = []
        score = 0.0
        for t, moves in enumerate(choice):
            for k in moves:
                out, _ = model.predictor(torch.tensor([[0, *tokens]]))
                pred = model.joiner.project_predictor(out[0, -1])
                score += model.joiner.join(enc[t], pred).log_softmax(-1)[k].item()
                tokens += [k] if k else []
        paths.setdefault(tuple(tokens), []).append(score)
    return {key: torch.tensor(s).logsumexp(0).item() for key, s in paths.items()}


@torch.no_grad()
@pytest.mark.parametrize("max_symbols, frames", [(1, 3), (2, 2)])
def test_exhaustive_beam_gives_exact_sequence_probabilities(max_symbols: int, frames: int) -> None:
    """With a beam wide enough to keep every hypothesis, merging is exact: log P(tokens)."""
    model, memory = fake("lstm", scale=1.0), torch.randn(1, frames, M)
    exact = brute_force(model, memory[0], max_symbols)
    length = torch.tensor([frames])
    [nbest] = transducer_beam_search(
        model, memory, length, beam=10**4, max_symbols_per_frame=max_symbols
    )
    assert len(nbest) == len(exact)
    for hyp in nbest:
        assert hyp.score == pytest.approx(exact[tuple(hyp.tokens)], abs=1e-4)
    assert nbest[0].score == pytest.approx(max(exact.values()), abs=1e-4)
    [greedy] = transducer_greedy(model, memory, length, max_symbols_per_frame=max_symbols)
    assert nbest[0].score >= greedy.score


@pytest.mark.parametrize("max_symbols", [1, 4])
def test_beam_4_best_scores_at_least_greedy_path(max_symbols: int) -> None:
    """Same scoring (log-probability, the same limit of symbols per frame); checked on random
    models, not a theorem: pruning could in principle lose the greedy path's prefix."""
    for predictor in ("lstm", "stateless"):
        model = fake(predictor)
        memory, lengths = torch.randn(6, 40, M), torch.tensor([40, 38, 30, 22, 15, 5])
        greedy = transducer_greedy(model, memory, lengths, max_symbols_per_frame=max_symbols)
        beam = transducer_beam_search(model, memory, lengths, 4, max_symbols_per_frame=max_symbols)
        for g, nbest in zip(greedy, beam, strict=True):
            assert nbest[0].score >= g.score - 1e-5
            assert len(nbest) <= 4 and [h.score for h in nbest] == sorted(
                (h.score for h in nbest), reverse=True
            )


GREEDY = DecodingOptions(strategy="greedy")


@pytest.mark.parametrize("options", [GREEDY, DecodingOptions(strategy="beam", beam_size=3)])
def test_streaming_equals_offline(options: DecodingOptions) -> None:
    model = fake("lstm")
    feats = torch.randn(2, 61, C)
    enc = model.encode(feats, torch.tensor([61, 61]))
    if options.strategy == "greedy":
        offline = transducer_greedy(model, enc.memory, enc.lengths)
    else:
        offline = [n[0] for n in transducer_beam_search(model, enc.memory, enc.lengths, 3)]
    assert any(h.tokens for h in offline)
    for _ in range(3):
        streamer = TransducerStreamer(model, batch=2, options=options)
        start, partial_lengths = 0, []
        while start < feats.shape[1]:
            size = random.randint(1, 9)
            partial = streamer.decode_chunk(feats[:, start : start + size])
            partial_lengths.append(len(partial[0].tokens))
            start += size
        final = streamer.finalize()
        assert streamer.frames == enc.memory.shape[1]
        for s, o in zip(final, offline, strict=True):
            assert (s.tokens, s.frames) == (o.tokens, o.frames)
            assert s.score == pytest.approx(o.score, abs=1e-4)
        if options.strategy == "greedy":  # greedy partial results only grow
            assert partial_lengths == sorted(partial_lengths)
        with pytest.raises(RuntimeError, match="after finalize"):
            streamer.decode_chunk(feats[:, :2])


def test_the_streamer_searches_as_every_helper_does_by_default() -> None:
    assert TransducerStreamer(fake("stateless")).options == DecodingOptions()


def test_decode_batch_runs_the_registered_transducer_searches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = fake("stateless")
    monkeypatch.setitem(SEARCHES, (FakeTransducer, "greedy"), search_module._rnnt_greedy)
    monkeypatch.setitem(SEARCHES, (FakeTransducer, "beam"), search_module._rnnt_beam)
    feats, lengths = torch.randn(2, 30, C), torch.tensor([30, 21])
    enc = model.encode(feats, lengths)
    greedy = decode_batch(model, feats, lengths, DecodingOptions(strategy="greedy"))
    assert [r.tokens for r in greedy] == [
        h.tokens for h in transducer_greedy(model, enc.memory, enc.lengths)
    ]
    beam = decode_batch(model, feats, lengths, DecodingOptions(strategy="beam", beam_size=2))
    nbests = transducer_beam_search(model, enc.memory, enc.lengths, 2)
    assert [r.tokens for r in beam] == [n[0].tokens for n in nbests]
    assert [r.score for r in beam] == pytest.approx([n[0].score for n in nbests])


# --- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["lstm", "stateless"])
def overfit(request: pytest.FixtureRequest) -> tuple[nn.Module, Tensor, Tensor, list[list[int]]]:
    """A tiny real TransducerModel trained (Adam) to overfit 2 random target sequences."""
    real = pytest.importorskip("mamba_asr.models.transducer", reason="no transducer model yet")
    from mamba_asr.modules.causal_frontend import CausalConvFrontEnd

    torch.manual_seed(0)
    vocab = 8
    predictor = (
        real.LSTMPredictor(vocab, 12)
        if request.param == "lstm"
        else real.StatelessPredictor(vocab, 12, context_size=2)
    )
    model = real.TransducerModel(
        CausalConvFrontEnd(C, 32, (16, 16), 3),  # 4x subsampling
        real.MambaEncoder(32, 1, 64, mamba={"d_state": 4, "expand": 2, "d_conv": 3}),
        vocab,
        predictor,
        real.Joiner(32, 12, 16, vocab),
    )
    feats, lengths = torch.randn(2, 64, C), torch.tensor([64, 52])
    targets, target_lengths = torch.randint(1, vocab, (2, 5)), torch.tensor([5, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds waiting (40x on a busy box)
    try:
        for _ in range(500):  # about 250 steps to loss < 0.05, ~1 s
            loss = model.loss(feats, lengths, targets, target_lengths).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.05:
                break
    finally:
        torch.set_num_threads(threads)
    wanted = [t[:n] for t, n in zip(targets.tolist(), target_lengths.tolist(), strict=True)]
    return model.eval(), feats, lengths, wanted


def test_real_model_overfit_is_recovered_by_greedy_and_beam(overfit) -> None:
    model, feats, lengths, wanted = overfit
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    assert [h.tokens for h in transducer_greedy(model, enc.memory, enc.lengths)] == wanted
    nbests = transducer_beam_search(model, enc.memory, enc.lengths, beam=4)
    assert [n[0].tokens for n in nbests] == wanted
    for options in (DecodingOptions(strategy="greedy"), DecodingOptions(beam_size=4)):
        assert [r.tokens for r in decode_batch(model, feats, lengths, options)] == wanted


@pytest.mark.parametrize("options", [GREEDY, DecodingOptions(strategy="beam", beam_size=4)])
def test_real_model_streaming_equals_offline(overfit, options: DecodingOptions) -> None:
    model, feats, lengths, wanted = overfit
    feats = feats[:1, :62]  # one stream; the last chunk is not a multiple of the subsampling
    with torch.no_grad():
        enc = model.encode(feats, torch.tensor([62]))
    if options.strategy == "greedy":
        [offline] = transducer_greedy(model, enc.memory, enc.lengths)
    else:
        [[offline, *_]] = transducer_beam_search(model, enc.memory, enc.lengths, beam=4)
    streamer = TransducerStreamer(model, batch=1, options=options)
    start = 0
    while start < feats.shape[1]:
        size = 4 * random.randint(1, 3)
        streamer.decode_chunk(feats[:, start : start + size])
        start += size
    [final] = streamer.finalize()
    assert (final.tokens, final.frames) == (offline.tokens, offline.frames)
    assert final.score == pytest.approx(offline.score, abs=1e-3)


# --- shallow fusion with an n-gram LM ------------------------------------------------------------


def tiny_lm(order: int = 3) -> NgramLM:
    """An LM over the fake model's V ids, trained on a fresh random corpus of ids 3..V-1."""
    corpus = [[random.randint(3, V - 1) for _ in range(random.randint(1, 6))] for _ in range(30)]
    return NgramLM.train(corpus, V, order)


@torch.no_grad()
def fused_greedy_reference(
    model: nn.Module, memory: Tensor, lm: NgramLM, weight: float, bonus: float
) -> tuple[list[int], float]:
    """Plain loop: per frame of memory (T, M), the argmax of log P_model + weight * log P_lm
    + bonus over tokens (blank: log P_model alone), at most one token per frame."""
    enc = model.joiner.project_encoder(memory)
    tokens: list[int] = []
    score = 0.0
    for t in range(memory.shape[0]):
        out, _ = model.predictor(torch.tensor([[0, *tokens]]))
        pred = model.joiner.project_predictor(out[0, -1])
        logp = model.joiner.join(enc[t], pred).float().log_softmax(-1)
        fused = logp + weight * torch.from_numpy(lm.log_probs(tokens)).float() + bonus
        fused[0] = logp[0]
        k = int(fused.argmax())
        score += float(fused[k])
        tokens += [k] if k else []
    return tokens, score


def test_fused_beam_1_equals_the_plain_fused_loop() -> None:
    model, lm = fake("lstm"), tiny_lm()
    memory, lengths = torch.randn(3, 25, M), torch.tensor([25, 18, 6])
    plain = transducer_beam_search(model, memory, lengths, 1, 1)
    fused = transducer_beam_search(model, memory, lengths, 1, 1, lm=lm, lm_weight=0.8,
                                   length_bonus=0.5)  # fmt: skip
    assert [n[0].tokens for n in fused] != [n[0].tokens for n in plain]  # the LM matters here
    for i, n in enumerate(lengths.tolist()):
        tokens, score = fused_greedy_reference(model, memory[i, :n], lm, 0.8, 0.5)
        assert fused[i][0].tokens == tokens
        assert fused[i][0].score == pytest.approx(score, abs=1e-4)


def test_fusion_with_weight_0_and_no_bonus_changes_nothing() -> None:
    model, lm = fake("stateless"), tiny_lm()
    memory, lengths = torch.randn(2, 20, M), torch.tensor([20, 13])
    plain = transducer_beam_search(model, memory, lengths, 3)
    same = transducer_beam_search(model, memory, lengths, 3, lm=lm, lm_weight=0.0)
    for a, b in zip(plain, same, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b])


def test_fused_streaming_equals_fused_offline(tmp_path) -> None:
    model = fake("lstm")
    lm_file = str(tiny_lm().save(tmp_path / "lm.npz"))
    options = DecodingOptions(strategy="beam", beam_size=3, lm=lm_file, lm_weight=0.5,
                              length_bonus=0.3)  # fmt: skip
    feats = torch.randn(1, 53, C)
    enc = model.encode(feats, torch.tensor([53]))
    offline = decode_batch_transducer(model, enc, options)
    streamer = TransducerStreamer(model, batch=1, options=options)
    for start in range(0, 53, 7):
        streamer.decode_chunk(feats[:, start : start + 7])
    [final] = streamer.finalize()
    assert final.tokens == offline.tokens
    assert final.score == pytest.approx(offline.score, abs=1e-4)


def decode_batch_transducer(model: nn.Module, enc: Encoded, options: DecodingOptions):
    [nbest] = transducer_beam_search(
        model, enc.memory, enc.lengths, options.beam_size,
        lm=NgramLM.load(options.lm), lm_weight=options.lm_weight,
        length_bonus=options.length_bonus,
    )  # fmt: skip
    return nbest[0]


def test_fusion_errors_are_named(tmp_path) -> None:
    model = fake("lstm")
    memory, lengths = torch.randn(1, 5, M), torch.tensor([5])
    with pytest.raises(ValueError, match="needs an lm"):
        transducer_beam_search(model, memory, lengths, 2, lm_weight=0.3)
    other = NgramLM.train([[3, 4, 5]], 7, 2)  # 7 ids, the model has V
    with pytest.raises(ValueError, match=f"the LM has 7 ids, the model {V}"):
        transducer_beam_search(model, memory, lengths, 2, lm=other, lm_weight=0.3)
