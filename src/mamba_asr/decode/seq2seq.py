"""Joint CTC/attention decoding of ``Seq2SeqModel``: greedy and batched beam search.

Shape key
    B: batch, W: hypotheses per utterance (beam), N: B * W hypotheses, T: encoder frames,
    M: d_model, U: decoder inputs so far (bos included), V: vocabulary, K: candidate tokens
    scored per hypothesis.

A hypothesis h = g + c scores (Watanabe et al. 2017, "Hybrid CTC/attention architecture for
end-to-end speech recognition")
    (1 - ctc_weight) * sum of decoder log-probs + ctc_weight * CTC prefix score of h,
where the CTC prefix score is log P(h is a prefix of the output | x), and for c = eos the
probability that g is the whole output. The decoder has no incremental cache: every step
re-runs ``model.decode`` on the full prefixes of all B * W hypotheses at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mamba_asr.decode.hypothesis import Hypothesis
from mamba_asr.models.seq2seq import Encoded, Seq2SeqModel
from mamba_asr.modules.masks import length_mask

__all__ = ["CTCPrefixScorer", "CTCPrefixState", "seq2seq_beam_search", "seq2seq_greedy"]

NEG_INF = float("-inf")
PRE_BEAM_RATIO = 1.5  # candidates per hypothesis scored by CTC: 1.5 * beam (ESPnet's pre-beam)


# --- CTC prefix scores ---------------------------------------------------------------------------


@dataclass
class CTCPrefixState:
    """CTC state of N prefixes g.

    r: (T, 2, N) log-probability of the alignments of frames 0..t that collapse to g, ending in
    a label ([:, 0]) or in blank ([:, 1]); psi: (N,) the prefix score of g; last: (N,) last
    label of g, -1 for none.
    """

    r: Tensor
    psi: Tensor
    last: Tensor


class CTCPrefixScorer:
    """CTC prefix scores (Watanabe et al. 2017, Algorithm 2) of N prefixes x K candidates.

    log_probs: (B, T, V) CTC log-probabilities; lengths: (B,) valid frames; hyps_per_utt: W,
    hypothesis n belongs to utterance n // W. Past an utterance's length every frame is blank
    with probability 1, so padded frames change nothing (ESPnet's ``CTCPrefixScoreTH``, here
    without its frame windowing).
    """

    def __init__(
        self, log_probs: Tensor, lengths: Tensor, hyps_per_utt: int, blank: int, eos: int
    ) -> None:
        batch, frames, _ = log_probs.shape
        valid = length_mask(lengths, frames, log_probs.device)  # (B, T)
        x = log_probs.float().masked_fill(~valid[..., None], NEG_INF)  # (B, T, V)
        x[..., blank] = log_probs[..., blank].float().masked_fill(~valid, 0.0)
        self.x, self.blank, self.eos = x, blank, eos
        self.utt = torch.arange(batch, device=x.device).repeat_interleave(hyps_per_utt)  # (N,)
        self.last_frame = (lengths.to(x.device).long() - 1).clamp(min=0)[self.utt]  # (N,)

    def initial_state(self) -> CTCPrefixState:
        """The empty prefix for every hypothesis: only blanks so far."""
        blank = self.x[self.utt, :, self.blank].T  # (T, N)
        r = torch.stack([torch.full_like(blank, NEG_INF), blank.cumsum(0)], dim=1)  # (T, 2, N)
        n = self.utt.numel()
        return CTCPrefixState(r, blank.new_zeros(n), self.utt.new_full((n,), -1))

    def score(self, state: CTCPrefixState, cands: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
        """Prefix scores of g + c for candidates ``cands`` (N, K), g of ``num_labels`` labels.

        Returns psi (N, K) (eos: log P(output == g); blank: -inf) and r (T, 2, N, K), the
        state of every candidate prefix.
        """
        frames = self.x.shape[1]
        xc = self.x[self.utt[:, None], :, cands].permute(2, 0, 1)  # (N, K, T) -> (T, N, K)
        xb = self.x[self.utt, :, self.blank].T[..., None]  # (T, N, 1)
        r_sum = torch.logaddexp(state.r[:, 0], state.r[:, 1])  # (T, N)
        same = cands == state.last[:, None]  # (N, K): a repeat must pass through a blank
        phi = torch.where(same, state.r[:, 1, :, None], r_sum[..., None])  # (T, N, K)
        rn = torch.full_like(xc, NEG_INF)  # (T, N, K)
        rb = torch.full_like(xc, NEG_INF)
        if num_labels == 0:
            rn[0] = xc[0]
        start = min(max(num_labels, 1), frames)  # g + c needs num_labels + 1 frames
        for t in range(start, frames):
            rn[t] = torch.logaddexp(rn[t - 1], phi[t - 1]) + xc[t]
            rb[t] = torch.logaddexp(rn[t - 1], rb[t - 1]) + xb[t]
        steps = torch.cat([rn[start - 1 : start], phi[start - 1 : -1] + xc[start:]])  # (*, N, K)
        psi = steps.logsumexp(dim=0)  # (N, K)
        whole = r_sum.gather(0, self.last_frame[None]).squeeze(0)  # (N,): log P(output == g)
        psi = torch.where(cands == self.eos, whole[:, None], psi)
        psi = psi.masked_fill(cands == self.blank, NEG_INF)
        return psi, torch.stack([rn, rb], dim=1)  # (N, K), (T, 2, N, K)

    @staticmethod
    def select(psi: Tensor, r: Tensor, cands: Tensor, parent: Tensor, k: Tensor) -> CTCPrefixState:
        """The state of candidates (parent[n], k[n]) for n in N': psi, r from ``score``."""
        return CTCPrefixState(r[:, :, parent, k], psi[parent, k], cands[parent, k])


# --- search --------------------------------------------------------------------------------------


def _mix(attention: Tensor, ctc: Tensor | None, ctc_weight: float) -> Tensor:
    """(1 - w) * attention + w * ctc, without 0 * -inf where a weight is 0."""
    if ctc is None or ctc_weight == 0.0:
        return attention
    if ctc_weight == 1.0:
        return ctc
    return (1.0 - ctc_weight) * attention + ctc_weight * ctc


def _token_bias(model: Seq2SeqModel, device: torch.device) -> Tensor:
    """(V,) 0 for tokens the decoder may emit, -inf for blank, pad and (unless it is eos) bos."""
    bias = torch.zeros(model.vocab_size, device=device)
    bias[[model.blank, model.pad]] = NEG_INF
    if model.bos != model.eos:
        bias[model.bos] = NEG_INF
    return bias


def _max_lengths(lengths: Tensor, ratio: float) -> Tensor:
    """(B,) encoder frames -> (B,) most output tokens (eos excluded), at least 1."""
    return (lengths.float() * ratio).floor().long().clamp(min=1)


def _allowed(bias: Tensor, force_eos: Tensor, eos: int) -> Tensor:
    """bias: (V,); force_eos: (N,) bool -> (N, V) additive mask; forced rows allow only eos."""
    only_eos = torch.full_like(bias, NEG_INF)
    only_eos[eos] = 0.0
    return torch.where(force_eos[:, None], only_eos, bias)  # (N, V)


def _next_log_probs(model: Seq2SeqModel, tokens: Tensor, memory: Encoded) -> Tensor:
    """tokens: (N, U) -> (N, V) decoder log-probabilities of the next token."""
    lengths = tokens.new_full((tokens.shape[0],), tokens.shape[1])
    return model.decode(tokens, lengths, memory.memory, memory.lengths)[:, -1]


@dataclass
class _Running:
    """Live hypotheses: tokens (N, U) bos first; score (N,) joint score, -inf for dead slots;
    attention (N,) summed decoder log-probs; ctc: CTC state (None when ctc_weight is 0)."""

    tokens: Tensor
    score: Tensor
    attention: Tensor
    ctc: CTCPrefixState | None


@dataclass
class _Candidates:
    """K candidates per hypothesis: tokens, joint score, attention sum, CTC psi (N, K); CTC
    state r (T, 2, N, K) or None."""

    tokens: Tensor
    joint: Tensor
    attention: Tensor
    psi: Tensor | None
    r: Tensor | None


@dataclass(frozen=True)
class _Search:
    model: Seq2SeqModel
    memory: Encoded  # memory (N, T, M), lengths (N,): each utterance repeated W times
    scorer: CTCPrefixScorer | None
    bias: Tensor  # (V,)
    beam: int
    pre_beam: int
    ctc_weight: float
    length_normalization: bool


def _expand(s: _Search, run: _Running, force_eos: Tensor, step: int) -> _Candidates:
    """Score K candidate tokens after every live hypothesis; force_eos: (N,) bool."""
    att = _next_log_probs(s.model, run.tokens, s.memory)  # (N, V)
    allowed = _allowed(s.bias, force_eos, s.model.eos)  # (N, V)
    if s.ctc_weight == 1.0:  # attention plays no part: every token is a candidate
        cands = torch.arange(att.shape[1], device=att.device).expand_as(att)  # (N, V)
    else:
        cands = (att + allowed).topk(s.pre_beam, dim=1).indices  # (N, K)
    attention = run.attention[:, None] + att.gather(1, cands)  # (N, K)
    psi = r = None
    if s.scorer is not None and run.ctc is not None:
        psi, r = s.scorer.score(run.ctc, cands, num_labels=step)
    dead = torch.where(run.score.isneginf(), NEG_INF, 0.0)[:, None]  # (N, 1)
    joint = _mix(attention, psi, s.ctc_weight) + allowed.gather(1, cands) + dead  # (N, K)
    return _Candidates(cands, joint, attention, psi, r)


@dataclass
class _Choice:
    """Top 2W candidates of each utterance: hyp/k (B, 2W) indices into the (N, K) candidates,
    score (B, 2W), is_eos (B, 2W); keep (B, W) positions of the W best non-eos ones."""

    hyp: Tensor
    k: Tensor
    score: Tensor
    is_eos: Tensor
    keep: Tensor


def _choose(c: _Candidates, beam: int, eos: int) -> _Choice:
    """2W best per utterance: at most W end in eos, so W non-eos ones always remain."""
    num_k = c.joint.shape[1]
    flat = c.joint.view(-1, beam * num_k)  # (B, W*K)
    score, index = flat.topk(2 * beam, dim=1)  # (B, 2W)
    base = torch.arange(flat.shape[0], device=flat.device)[:, None] * beam  # (B, 1)
    hyp, k = base + index // num_k, index % num_k  # (B, 2W) each
    is_eos = c.tokens[hyp, k] == eos
    rank = torch.arange(2 * beam, device=flat.device)
    keep = (is_eos.long() * 2 * beam + rank).argsort(dim=1)[:, :beam]  # (B, W)
    return _Choice(hyp, k, score, is_eos, keep)


def _advance(s: _Search, run: _Running, c: _Candidates, ch: _Choice, active: Tensor) -> _Running:
    """The next live hypotheses: the kept candidates; rows of inactive utterances die."""
    hyp, k = ch.hyp.gather(1, ch.keep).flatten(), ch.k.gather(1, ch.keep).flatten()  # (N,)
    score = ch.score.gather(1, ch.keep).masked_fill(~active[:, None], NEG_INF).flatten()
    tokens = torch.cat([run.tokens[hyp], c.tokens[hyp, k][:, None]], dim=1)  # (N, U+1)
    ctc = None
    if c.psi is not None and c.r is not None:
        ctc = CTCPrefixScorer.select(c.psi, c.r, c.tokens, hyp, k)
    return _Running(tokens, score, c.attention[hyp, k], ctc)


def _finish(
    s: _Search,
    run: _Running,
    c: _Candidates,
    ch: _Choice,
    active: Tensor,
    out: list[list[Hypothesis]],
) -> None:
    """Append the eos candidates among each active utterance's W best to ``out`` (per utt)."""
    ended = ch.is_eos[:, : s.beam] & ch.score[:, : s.beam].isfinite() & active[:, None]
    for b, j in ended.nonzero().tolist():
        n, k = int(ch.hyp[b, j]), int(ch.k[b, j])
        tokens = run.tokens[n, 1:].tolist()
        joint = float(ch.score[b, j])
        out[b].append(
            Hypothesis(
                tokens=tokens,
                score=joint / (len(tokens) + 1) if s.length_normalization else joint,
                ctc_score=float(c.psi[n, k]) if c.psi is not None else None,
                attention_score=float(c.attention[n, k]),
            )
        )


def _start(s: _Search, batch: int, bos: int) -> _Running:
    """One live empty hypothesis (bos) per utterance; the other W - 1 slots dead."""
    n = batch * s.beam
    device = s.memory.memory.device
    score = torch.full((n,), NEG_INF, device=device)
    score[:: s.beam] = 0.0
    tokens = torch.full((n, 1), bos, dtype=torch.long, device=device)
    ctc = s.scorer.initial_state() if s.scorer is not None else None
    return _Running(tokens, score, torch.zeros(n, device=device), ctc)


def _check(beam_size: int, ctc_weight: float, max_decode_ratio: float) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
    if max_decode_ratio <= 0.0:
        raise ValueError(f"max_decode_ratio must be > 0, got {max_decode_ratio}")


def _prepare(
    model: Seq2SeqModel, enc: Encoded, beam: int, ctc_weight: float, length_normalization: bool
) -> _Search:
    scorer = None
    if ctc_weight > 0.0:
        log_probs = model.ctc_log_probs(enc.memory)  # (B, T, V)
        scorer = CTCPrefixScorer(log_probs, enc.lengths, beam, model.blank, model.eos)
    memory = Encoded(
        enc.memory.repeat_interleave(beam, dim=0), enc.lengths.repeat_interleave(beam, dim=0)
    )  # (N, T, M), (N,)
    pre_beam = min(model.vocab_size, max(2, int(PRE_BEAM_RATIO * beam)))
    bias = _token_bias(model, enc.memory.device)
    return _Search(model, memory, scorer, bias, beam, pre_beam, ctc_weight, length_normalization)


@torch.no_grad()
def seq2seq_beam_search(
    model: Seq2SeqModel,
    feats: Tensor,
    feat_lengths: Tensor,
    beam_size: int = 10,
    ctc_weight: float = 0.4,
    length_normalization: bool = True,
    max_decode_ratio: float = 1.0,
    nbest: int | None = None,
) -> list[list[Hypothesis]]:
    """Batched joint CTC/attention beam search.

    feats: (B, F, C); feat_lengths: (B,). Each step keeps the ``beam_size`` best unfinished
    hypotheses per utterance; an eos among the step's ``beam_size`` best ends a hypothesis. An
    utterance stops once it has ``beam_size`` finished hypotheses or after
    ``floor(max_decode_ratio * encoder frames)`` tokens (then eos is forced). Finished
    hypotheses are ranked by joint score / (tokens + 1) with ``length_normalization``, else by
    the joint score. Returns up to ``nbest`` (default ``beam_size``) per utterance, best first.
    Call ``model.eval()`` first (dropout would change the scores).
    """
    _check(beam_size, ctc_weight, max_decode_ratio)
    enc = model.encode(feats, feat_lengths)
    s = _prepare(model, enc, beam_size, ctc_weight, length_normalization)
    batch = feats.shape[0]
    max_len = _max_lengths(enc.lengths, max_decode_ratio)  # (B,)
    run = _start(s, batch, model.bos)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = torch.ones(batch, dtype=torch.bool, device=max_len.device)
    for step in range(int(max_len.max()) + 1):
        force_eos = (step >= max_len).repeat_interleave(beam_size)  # (N,)
        cands = _expand(s, run, force_eos, step)
        choice = _choose(cands, beam_size, model.eos)
        _finish(s, run, cands, choice, active, finished)
        run = _advance(s, run, cands, choice, active)
        done = torch.tensor([len(f) >= beam_size for f in finished], device=active.device)
        alive = run.score.view(batch, beam_size).isfinite().any(dim=1)  # (B,)
        active &= ~done & alive & (step < max_len)
        if not active.any():
            break
    return [_ranked(f, nbest or beam_size) for f in finished]


def _ranked(hyps: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    if not hyps:
        return [Hypothesis(tokens=[], score=NEG_INF)]
    return sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest]


@torch.no_grad()
def seq2seq_greedy(
    model: Seq2SeqModel,
    feats: Tensor,
    feat_lengths: Tensor,
    ctc_weight: float = 0.0,
    max_decode_ratio: float = 1.0,
) -> list[Hypothesis]:
    """Greedy decoding: the best next token each step, until eos or the length limit.

    feats: (B, F, C); feat_lengths: (B,). With ``ctc_weight`` 0 (the default) this is the
    decoder's argmax; otherwise the joint score picks the token, i.e. beam search with one
    hypothesis. ``score`` is the (unnormalized) sum of log-probabilities, eos included.
    """
    _check(1, ctc_weight, max_decode_ratio)
    if ctc_weight > 0.0:
        hyps = seq2seq_beam_search(
            model, feats, feat_lengths, 1, ctc_weight, False, max_decode_ratio
        )
        return [h[0] for h in hyps]
    enc = model.encode(feats, feat_lengths)
    max_len = _max_lengths(enc.lengths, max_decode_ratio)  # (B,)
    bias = _token_bias(model, enc.memory.device)
    batch = feats.shape[0]
    tokens = torch.full((batch, 1), model.bos, dtype=torch.long, device=enc.memory.device)
    score = torch.zeros(batch, device=enc.memory.device)
    done = torch.zeros(batch, dtype=torch.bool, device=enc.memory.device)
    for step in range(int(max_len.max()) + 1):
        att = _next_log_probs(model, tokens, enc) + _allowed(bias, step >= max_len, model.eos)
        best, nxt = att.max(dim=1)  # (B,), (B,)
        score += best.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, model.eos)  # finished rows repeat eos
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, U+1)
        done |= nxt == model.eos
        if done.all():
            break
    return [
        Hypothesis(tokens=_until_eos(row, model.eos), score=float(sc), attention_score=float(sc))
        for row, sc in zip(tokens[:, 1:].tolist(), score.tolist(), strict=True)
    ]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
