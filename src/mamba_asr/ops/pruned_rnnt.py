"""Pruned RNN-T loss (Kuang et al. 2022, k2's method) in plain PyTorch (CPU, MPS, CUDA).

Shape key
    B: batch, T: frames (max of logit_lengths), U: target tokens (max of target_lengths),
    V: vocabulary (blank included), J: joiner width, R: band width min(s_range, U + 1).

The full loss needs the joiner on all (B, T, U + 1) pairs, a (B, T, U + 1, V) tensor. The pruned
loss gets there in three steps:

    rnnt_loss_simple   the RNN-T loss of a "simple" joint am[b, t] + lm[b, u] (no hidden layer), whose
                       normalizer log sum_v exp(am + lm) is a max-shifted exp and one batched matmul,
                       so no (B, T, U + 1, V) tensor exists; it also returns the posterior of every
                       lattice move, which says where the alignments go.
    prune_ranges       from those posteriors, the R consecutive tokens u = s_t .. s_t + R - 1 that
                       each frame keeps (s_t non-decreasing, every utterance keeps a path).
    do_rnnt_pruning    the joiner's projected inputs gathered on that band, (B, T, R, J) each, for
                       the real joiner; its logits are (B, T, R, V). ``band_join`` gives the
                       joiner's hidden layer tanh(am + lm) on the band directly (on the triton
                       backend one kernel each way, without the gathered copies).
    rnnt_loss_pruned   the exact RNN-T loss of the band logits: paths that leave the band count 0.

``pruned_transducer_loss`` is all of it from the encoder and predictor outputs through a
transducer's five linear layers (simple heads, joiner projections, joiner output): on the triton
backend one autograd node with its backward written out, so a step's host time is its launches
and not autograd's bookkeeping over a dozen nodes.

A training loss is pruned + scale * simple (the simple loss trains the projections that choose
the band). All of it runs the lattice recursion of ``ops.rnnt_loss`` (anti-diagonals, analytic
gradient) in fp32, also under autocast; the simple normalizer's matmul runs with autocast off.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_asr.ops.rnnt_loss import (
    REDUCTIONS,
    LatticeResult,
    apply_reduction,
    resolve_rnnt_backend,
    rnnt_lattice,
)

__all__ = [
    "JoinerWeights",
    "PrunedInputs",
    "PrunedTransducerLoss",
    "SimpleLoss",
    "band_join",
    "do_rnnt_pruning",
    "prune_ranges",
    "pruned_transducer_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
]


class SimpleLoss(NamedTuple):
    """``rnnt_loss_simple``'s result.

    loss: the reduced loss (B,) for reduction "none"). blank_posterior, emit_posterior: (B, T, U + 1)
    probability that the alignment takes the blank / the emission out of cell (t, u) (their sum is
    the probability of passing through (t, u)); None unless return_grad. They equal -d loss / d of
    the move log-probs (k2's px_grad / py_grad) and carry no gradient.
    """

    loss: Tensor
    blank_posterior: Tensor | None
    emit_posterior: Tensor | None


class PrunedInputs(NamedTuple):
    """``do_rnnt_pruning``'s result: am (B, T, R, J) (an expanded view) and lm (B, T, R, J), lm
    gathered so that lm[b, t, r] = lm_proj[b, ranges[b, t, r]]; the joiner adds them."""

    am: Tensor
    lm: Tensor


def _check_lengths(batch: int, logit_lengths: Tensor, target_lengths: Tensor) -> None:
    for name, t in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if t.shape != (batch,):
            raise ValueError(f"{name} must be (batch={batch},), got {tuple(t.shape)}")


def _check_targets(targets: Tensor, batch: int, u1: int) -> None:
    if targets.shape != (batch, u1 - 1):
        raise ValueError(
            f"targets must be (batch, U)={(batch, u1 - 1)}, got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where matmuls stay fp32 even inside a caller's autocast."""
    try:
        return torch.autocast(device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type this torch has no autocast for
        return contextlib.nullcontext()


def _simple_log_probs(lm: Tensor, am: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """lm (B, U + 1, V), am (B, T, V) -> blank and emission log-probs, (B, T, U + 1) each, of the
    joint am[b, t] + lm[b, u] under log_softmax over V, without building it."""
    batch, frames, _ = am.shape
    n_tok = lm.shape[1] - 1
    with _autocast_off(am.device):
        am, lm = am.float(), lm.float()
        # log sum_v exp(am[t, v] + lm[u, v]) = am_max[t] + lm_max[u] + log(e^(am - am_max) @ ...^T);
        # the shifts are constants (detached): the normalizer does not depend on them
        am_max = am.detach().amax(-1, keepdim=True)  # (B, T, 1)
        lm_max = lm.detach().amax(-1, keepdim=True)  # (B, U + 1, 1)
        am_exp, lm_exp = (am - am_max).exp(), (lm - lm_max).exp()  # (B, T, V), (B, U + 1, V)
        sums = torch.matmul(am_exp, lm_exp.transpose(1, 2))  # (B, T, U + 1)
        # a sum can underflow only when am and lm peak on different tokens by > 87 nats each
        tiny = torch.finfo(torch.float32).tiny
        norm = sums.clamp_min(tiny).log() + am_max + lm_max.transpose(1, 2)  # (B, T, U + 1)
    lp_blank = am[:, :, blank, None] + lm[:, None, :, blank] - norm  # (B, T, U + 1)
    sym = targets.long()  # (B, U)
    am_sym = am.gather(2, sym[:, None, :].expand(batch, frames, n_tok))  # (B, T, U)
    lm_sym = lm[:, :n_tok].gather(2, sym[:, :, None]).squeeze(-1)  # (B, U)
    lp_emit = am_sym + lm_sym[:, None, :] - norm[:, :, :n_tok]  # (B, T, U)
    return lp_blank, F.pad(lp_emit, (0, 1), value=float("-inf"))  # (B, T, U + 1) each


class _SimpleTritonFn(torch.autograd.Function):
    """The simple loss on the triton backend, with its gradient written out (few launches).

    Forward: am_max and am_exp = exp(am - am_max) (one kernel), lm likewise, sums = am_exp @
    lm_exp^T (B, T, U + 1), the move log-probs from them (one kernel), the lattice and the
    posteriors (two kernels). Backward, with G = d loss / d (lp_blank, lp_emit) = -grad_out *
    posteriors and W = (G_blank + G_emit) / sums (the part through the normalizer):
        d am = -am_exp * (W @ lm_exp) + G_blank at the blank + G_emit at each y_u (summed over u)
        d lm = -lm_exp * (W^T @ am_exp) + the same one-hot terms summed over t,
    which is what autograd gives for ``_simple_log_probs`` (the shifts am_max, lm_max cancel):
    one kernel for G and W, then a batched matmul and one kernel for each side.
    """

    @staticmethod
    def forward(
        ctx: Any, lm: Tensor, am: Tensor, targets: Tensor, logit_lengths: Tensor,
        target_lengths: Tensor, blank: int,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        from mamba_asr.ops.rnnt_triton import (
            lattice_posteriors_triton,
            row_max_exp_triton,
            simple_grids_triton,
        )

        am32, lm32 = am.float().contiguous(), lm.float().contiguous()
        am_max, am_exp = row_max_exp_triton(am32)  # (B, T, 1), (B, T, V)
        lm_max, lm_exp = row_max_exp_triton(lm32)  # (B, U + 1, 1), (B, U + 1, V)
        with _autocast_off(am.device):
            sums = torch.bmm(am_exp, lm_exp.transpose(1, 2))  # (B, T, U + 1)
        targets = targets.contiguous()
        lp_blank, lp_emit = simple_grids_triton(am32, lm32, targets, sums, am_max, lm_max, blank)
        nll, post_blank, post_emit = lattice_posteriors_triton(
            lp_blank, lp_emit, logit_lengths, target_lengths
        )
        ctx.save_for_backward(am_exp, lm_exp, sums, post_blank, post_emit, targets)
        ctx.blank = blank
        ctx.dtypes = (lm.dtype, am.dtype)
        ctx.mark_non_differentiable(post_blank, post_emit)
        return nll, post_blank, post_emit

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        from mamba_asr.ops.rnnt_triton import simple_grads_triton

        am_exp, lm_exp, sums, post_blank, post_emit, targets = ctx.saved_tensors
        with _autocast_off(am_exp.device):
            d_am, d_lm = simple_grads_triton(
                am_exp, lm_exp, sums, post_blank, post_emit, targets, grad_out, ctx.blank,
                need_am=ctx.needs_input_grad[1], need_lm=ctx.needs_input_grad[0],
            )  # fmt: skip
        d_lm = None if d_lm is None else d_lm.to(ctx.dtypes[0])
        d_am = None if d_am is None else d_am.to(ctx.dtypes[1])
        return d_lm, d_am, None, None, None, None


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    return_grad: bool = True,
    backend: str = "auto",
) -> SimpleLoss:
    """RNN-T loss of the joint logits am[b, t, :] + lm[b, u, :], never materialized.

    lm: (B, U + 1, V) predictor-side logits (row u: after u tokens); am: (B, T, V) encoder-side
    logits (any float dtype, computed in fp32); targets: (B, U) token ids; logit_lengths,
    target_lengths: (B,). Equals ``rnnt_loss(am[:, :, None] + lm[:, None], ...)`` in value and
    gradient; memory is O(B T U + B (T + U) V). return_grad: also return the move posteriors
    that ``prune_ranges`` needs (computed in the forward pass anyway, so they are free).
    backend: "auto", "torch" or "triton" (on "triton" the normalizer, log-probs, lattice and
    gradient run as kernels: ``_SimpleTritonFn``).
    """
    if am.dim() != 3 or lm.dim() != 3 or am.shape[::2] != lm.shape[::2]:
        raise ValueError(
            f"am must be (B, T, V) and lm (B, U + 1, V), got {tuple(am.shape)} and {tuple(lm.shape)}"
        )
    batch, u1, vocab = lm.shape
    _check_targets(targets, batch, u1)
    _check_lengths(batch, logit_lengths, target_lengths)
    _check_reduction(reduction)
    backend = resolve_rnnt_backend(backend, am.device)
    if backend == "triton":
        res = LatticeResult(
            *_SimpleTritonFn.apply(lm, am, targets, logit_lengths, target_lengths, blank % vocab)
        )
    else:
        lp_blank, lp_emit = _simple_log_probs(lm, am, targets, blank % vocab)
        res = rnnt_lattice(lp_blank, lp_emit, logit_lengths, target_lengths, backend)
    loss = apply_reduction(res.nll, reduction).to(am.dtype)
    if not return_grad:
        return SimpleLoss(loss, None, None)
    return SimpleLoss(loss, res.blank_posterior, res.emit_posterior)


def _shifted_cum(x: Tensor, step: int, op: str) -> Tensor:
    """(B, T) -> step * t + cum{max,min} over t of (x - step * t); "max" runs from the end."""
    ramp = step * torch.arange(x.shape[1], device=x.device)  # (T,)
    y = x - ramp
    # max over t' >= t, or min over t' <= t
    y = y.flip(1).cummax(1).values.flip(1) if op == "max" else y.cummin(1).values
    return y + ramp


def prune_ranges(
    blank_posterior: Tensor,
    emit_posterior: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    s_range: int,
    backend: str = "auto",
) -> Tensor:
    """The band of tokens each frame keeps: (B, T, R) long, ranges[b, t] = s_t + arange(R).

    blank_posterior, emit_posterior: (B, T, U + 1) from ``rnnt_loss_simple``; s_range >= 2 the
    band width (R = min(s_range, U + 1): a band as wide as the lattice keeps everything).
    s_t starts as the window of R tokens holding the most alignment mass at frame t (the mass of
    cell (t, u) is its blank + emission posterior), then is made valid: s_0 = 0, s_t = the last
    start max(U_b - R + 1, 0) from frame T_b - 1 on (padding frames included), non-decreasing, and
    s_{t+1} - s_t <= R - 1 so that a path can stay inside (earlier frames move up where a later
    one jumps). That is possible when U_b <= (R - 1) * T_b; otherwise no path fits in any band and
    the pruned loss of that utterance is inf.
    backend: "triton" (what "auto" means on CUDA tensors, up to 8192 frames) does all of it in one
    kernel (``ops.rnnt_triton.prune_ranges_triton``); its window sums are added in another order,
    so where two windows hold the same mass up to rounding either may be chosen.
    """
    if s_range < 2:
        raise ValueError(f"s_range must be >= 2, got {s_range}")
    batch, frames, u1 = blank_posterior.shape
    _check_lengths(batch, logit_lengths, target_lengths)
    width = min(s_range, u1)
    device = blank_posterior.device
    if resolve_rnnt_backend(backend, device) == "triton" and frames <= 8192:
        from mamba_asr.ops.rnnt_triton import prune_ranges_triton

        return prune_ranges_triton(
            blank_posterior, emit_posterior, logit_lengths, target_lengths, width
        )
    mass = (blank_posterior + emit_posterior).float()  # (B, T, U + 1)
    cum = F.pad(mass.cumsum(-1), (1, 0))  # (B, T, U + 2)
    windows = cum[..., width:] - cum[..., :-width]  # (B, T, U + 2 - R): mass of [s, s + R)
    last_start = (target_lengths.to(device).long() - width + 1).clamp_min(0)  # (B,)
    starts = torch.arange(windows.shape[-1], device=device)
    windows = windows.masked_fill(starts > last_start[:, None, None], -1.0)
    s = windows.argmax(-1)  # (B, T)
    t = torch.arange(frames, device=device)[None, :]
    end = logit_lengths.to(device).long()[:, None] - 1  # (B, 1)
    s = torch.where(t >= end, last_start[:, None], s)
    s = torch.where(t == 0, 0, s).cummax(1).values  # non-decreasing
    s = _shifted_cum(s, width - 1, "max")  # earlier frames up: steps <= R - 1
    s = _shifted_cum(torch.where(t == 0, 0, s), width - 1, "min")  # keep s_0 = 0 (if infeasible)
    return s[:, :, None] + torch.arange(width, device=device)  # (B, T, R)


def do_rnnt_pruning(am_proj: Tensor, lm_proj: Tensor, ranges: Tensor) -> PrunedInputs:
    """Joiner inputs on the band: am_proj (B, T, J), lm_proj (B, U + 1, J), ranges (B, T, R)
    -> am (B, T, R, J) (expanded, no copy) and lm (B, T, R, J) with lm[b, t, r] =
    lm_proj[b, ranges[b, t, r]]. Project first, then gather: the joiner adds the two."""
    batch, frames, width = ranges.shape
    dim = lm_proj.shape[-1]
    idx = ranges.reshape(batch, frames * width, 1).expand(-1, -1, dim)  # (B, T R, J)
    lm = lm_proj.gather(1, idx).view(batch, frames, width, dim)  # (B, T, R, J)
    return PrunedInputs(am=am_proj[:, :, None, :].expand(-1, -1, width, -1), lm=lm)


class _BandJoinTritonFn(torch.autograd.Function):
    """``band_join`` on the triton backend: one kernel forward (gather, add, tanh), one backward
    (tanh', the sum over the band rows for am, atomics into lm); saves the output only."""

    @staticmethod
    def forward(ctx: Any, am_proj: Tensor, lm_proj: Tensor, ranges: Tensor) -> Tensor:
        from mamba_asr.ops.rnnt_triton import band_join_triton

        ranges = ranges.contiguous()
        hidden = band_join_triton(am_proj.contiguous(), lm_proj.contiguous(), ranges)
        ctx.save_for_backward(hidden, ranges)
        ctx.info = (lm_proj.shape[1], am_proj.dtype, lm_proj.dtype)
        return hidden

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        from mamba_asr.ops.rnnt_triton import band_join_grad_triton

        hidden, ranges = ctx.saved_tensors
        d_am, d_lm = band_join_grad_triton(grad.contiguous(), hidden, ranges, *ctx.info)
        return d_am, d_lm, None


def band_join(am_proj: Tensor, lm_proj: Tensor, ranges: Tensor, backend: str = "auto") -> Tensor:
    """The joiner's hidden layer on the band: tanh(am_proj[b, t] + lm_proj[b, ranges[b, t, r]]).

    am_proj (B, T, J), lm_proj (B, U + 1, J): the joiner's projected inputs; ranges (B, T, R)
    from ``prune_ranges``. Returns (B, T, R, J) in the inputs' promoted dtype; the joiner's output
    layer turns it into the band logits. "torch": ``do_rnnt_pruning`` then tanh (what it
    equals); "triton" (what "auto" means on CUDA): one kernel, and one for the gradient, which
    neither materialises the gathered (B, T, R, J) inputs nor their sum (it clamps positions
    outside 0 .. U into range where the torch backend raises an index error).
    """
    if am_proj.dim() != 3 or lm_proj.dim() != 3 or ranges.dim() != 3:
        raise ValueError(
            f"am_proj must be (B, T, J), lm_proj (B, U + 1, J) and ranges (B, T, R), got "
            f"{tuple(am_proj.shape)}, {tuple(lm_proj.shape)} and {tuple(ranges.shape)}"
        )
    if resolve_rnnt_backend(backend, am_proj.device) == "triton":
        return _BandJoinTritonFn.apply(am_proj, lm_proj, ranges)
    band = do_rnnt_pruning(am_proj, lm_proj, ranges)
    return torch.tanh(band.am + band.lm)


class _BandLogProbsFn(torch.autograd.Function):
    """Band logits (B, T, R, V) -> blank and emission log-probs (B, T, R) each, in fp32.

    Saves the logits and their logsumexp only; the backward builds the (B, T, R, V) gradient
    once: -softmax * (g_blank + g_emit) plus g_blank / g_emit at the blank / symbol columns.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, symbols: Tensor, blank: int) -> tuple[Tensor, Tensor]:
        x = logits.float()
        lse = torch.logsumexp(x, dim=-1)  # (B, T, R)
        lp_blank = x[..., blank] - lse
        lp_emit = x.gather(-1, symbols[..., None]).squeeze(-1) - lse
        ctx.save_for_backward(logits, symbols, lse)
        ctx.blank = blank
        return lp_blank, lp_emit

    @staticmethod
    def backward(ctx: Any, g_blank: Tensor, g_emit: Tensor) -> tuple[Tensor | None, ...]:
        logits, symbols, lse = ctx.saved_tensors
        grad = torch.sub(logits.float(), lse[..., None]).exp_()  # (B, T, R, V) softmax
        grad.mul_(-(g_blank + g_emit)[..., None])
        grad[..., ctx.blank] += g_blank
        grad.scatter_add_(-1, symbols[..., None], g_emit[..., None])
        return grad.to(logits.dtype), None, None


class _PrunedTritonFn(torch.autograd.Function):
    """The pruned loss on the triton backend, in band coordinates: log-probs of the band rows
    (one kernel over V), the lattice over the (B, T, R) band itself, not a (B, T, U + 1) grid
    (two kernels: tables, posteriors), and in the backward the (B, T, R, V) gradient in one
    kernel. Saves the logits, (B, T, R) logsumexp, symbols and posteriors."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, targets: Tensor, ranges: Tensor, logit_lengths: Tensor,
        target_lengths: Tensor, blank: int,
    ) -> Tensor:  # fmt: skip
        from mamba_asr.ops.rnnt_triton import band_lattice_triton, band_logprobs_triton

        x = logits.contiguous()
        lse, lp_blank, lp_emit, sym = band_logprobs_triton(x, ranges, targets, blank)
        starts = ranges[:, :, 0]
        nll, post_blank, post_emit = band_lattice_triton(
            lp_blank, lp_emit, starts, logit_lengths, target_lengths, u1=targets.shape[1] + 1
        )
        ctx.save_for_backward(x, lse, sym, post_blank, post_emit)
        ctx.blank = blank
        return nll

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        from mamba_asr.ops.rnnt_triton import band_grad_triton

        x, lse, sym, post_blank, post_emit = ctx.saved_tensors
        grad = band_grad_triton(x, lse, sym, post_blank, post_emit, grad_out, ctx.blank)
        return grad, None, None, None, None, None


def rnnt_loss_pruned(
    logits: Tensor,
    targets: Tensor,
    ranges: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """RNN-T loss over the band of ``prune_ranges``: paths that leave it count 0.

    logits: (B, T, R, V) joiner outputs on the band (any float dtype, computed in fp32), row r of
    frame t being token position ranges[b, t, r]; targets: (B, U); ranges: (B, T, R) from
    ``prune_ranges`` (R <= U + 1, consecutive positions s_t .. s_t + R - 1 <= U in each frame;
    the triton backend works in band coordinates and gives NaN for other ranges); logit_lengths,
    target_lengths: (B,). With R = U + 1 it is ``rnnt_loss`` of the full logits. "torch": the
    band's log-probs are scattered into a -inf (B, T, U + 1) grid (no V in it) for the lattice
    recursion; "triton": the recursion runs over the (B, T, R) band itself (``_PrunedTritonFn``).
    backend: "auto", "torch" or "triton" (``rnnt_loss.resolve_rnnt_backend``).
    Returns the loss in the logits' dtype.
    """
    if logits.dim() != 4 or ranges.shape != logits.shape[:3]:
        raise ValueError(
            f"logits must be (B, T, R, V) and ranges (B, T, R), got {tuple(logits.shape)} "
            f"and {tuple(ranges.shape)}"
        )
    batch, frames, width, vocab = logits.shape
    n_tok = targets.shape[-1]
    _check_targets(targets, batch, n_tok + 1)
    _check_lengths(batch, logit_lengths, target_lengths)
    _check_reduction(reduction)
    backend = resolve_rnnt_backend(backend, logits.device)
    if width > n_tok + 1:
        raise ValueError(f"the band ({width}) is wider than the lattice (U + 1 = {n_tok + 1})")
    blank = blank % vocab
    if backend == "triton":
        nll = _PrunedTritonFn.apply(logits, targets, ranges, logit_lengths, target_lengths, blank)
        return apply_reduction(nll, reduction).to(logits.dtype)
    ranges = ranges.long()
    padded = F.pad(targets.long(), (0, 1), value=blank)  # (B, U + 1): no token after the last
    symbols = padded.gather(1, ranges.reshape(batch, -1)).view(batch, frames, width)  # (B, T, R)
    band_blank, band_emit = _BandLogProbsFn.apply(logits, symbols, blank)  # (B, T, R) each
    grid = torch.full((batch, frames, n_tok + 1), float("-inf"), device=logits.device)
    lp_blank = grid.scatter(2, ranges, band_blank)  # (B, T, U + 1)
    lp_emit = grid.scatter(2, ranges, band_emit)  # (B, T, U + 1)
    nll = rnnt_lattice(lp_blank, lp_emit, logit_lengths, target_lengths, backend).nll  # (B,)
    return apply_reduction(nll, reduction).to(logits.dtype)


# --- the whole pruned transducer loss from the encoder and predictor outputs -------------------


class JoinerWeights(NamedTuple):
    """The five linear layers of a pruned transducer's loss, each a (weight (out, in), bias
    (out,) or None) pair: the simple heads am (M -> V) and lm (P -> V), the joiner's projections
    enc (M -> J) and pred (P -> J), and its output layer (J -> V)."""

    simple_am: tuple[Tensor, Tensor | None]
    simple_lm: tuple[Tensor, Tensor | None]
    enc_proj: tuple[Tensor, Tensor | None]
    pred_proj: tuple[Tensor, Tensor | None]
    out: tuple[Tensor, Tensor | None]

    def flat(self) -> tuple[Tensor | None, ...]:
        """(weight, bias) of each layer in field order: 10 entries."""
        return tuple(x for pair in self for x in pair)

    @classmethod
    def of(cls, *layers: Any) -> JoinerWeights:
        """From five layers with ``weight`` and ``bias`` (``nn.Linear``), in field order."""
        return cls(*((layer.weight, layer.bias) for layer in layers))


class PrunedTransducerLoss(NamedTuple):
    """``pruned_transducer_loss``'s result: per-utterance pruned and simple losses (B,) fp32,
    the band's logits (B, T, R, V) (differentiable: a loss on them, such as lattice
    distillation, back-propagates through the joiner) and the band's ranges (B, T, R) long."""

    pruned: Tensor
    simple: Tensor
    logits: Tensor
    ranges: Tensor


def _pruned_transducer_torch(
    enc: Tensor, pred: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor,
    weights: JoinerWeights, prune_range: int, blank: int, backend: str,
) -> PrunedTransducerLoss:  # fmt: skip
    """The composite: each step its own op (and autograd node), on ``backend``'s recursions."""
    simple = rnnt_loss_simple(
        F.linear(pred, *weights.simple_lm), F.linear(enc, *weights.simple_am), targets,
        logit_lengths, target_lengths, blank, reduction="none", backend=backend,
    )  # fmt: skip
    ranges = prune_ranges(
        simple.blank_posterior, simple.emit_posterior, logit_lengths, target_lengths, prune_range,
        backend=backend,
    )  # fmt: skip
    hidden = band_join(
        F.linear(enc, *weights.enc_proj), F.linear(pred, *weights.pred_proj), ranges, backend
    )
    logits = F.linear(hidden, *weights.out)  # (B, T, R, V)
    pruned = rnnt_loss_pruned(
        logits, targets, ranges, logit_lengths, target_lengths, blank, "none", backend
    )
    return PrunedTransducerLoss(pruned.float(), simple.loss.float(), logits, ranges)


def _linear_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, dy: Tensor, needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of y = x W^T + b to x (x's shape and dtype), W and b (their dtypes) from dy;
    None where ``needs`` (x, W, b) is False. Products run under the caller's autocast state."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    dx = dw = db = None
    if needs[0]:
        dx = torch.mm(dy2, weight).to(x.dtype).view(x.shape)
    if needs[1]:
        dw = torch.mm(dy2.t(), x.reshape(-1, x.shape[-1])).to(weight.dtype)
    if needs[2] and bias is not None:
        db = dy2.sum(0, dtype=torch.float32).to(bias.dtype)
    return dx, dw, db


class _PrunedTransducerTritonFn(torch.autograd.Function):
    """``pruned_transducer_loss`` on the triton backend as one autograd node.

    Forward: the simple heads, the simple loss's kernels (``_SimpleTritonFn``), the band
    (``prune_ranges_triton``), the projections, the band join, the output layer and the pruned
    loss's kernels (``_PrunedTritonFn``). Backward, in reverse, the same kernels' gradients and
    the linear layers' products written out: dx = dy W, dW = dy^T x, db = sum dy; enc's and
    pred's gradients from the simple heads and the projections are summed. A gradient to the
    band's logits (a loss on them) is added to the pruned loss's before the output layer. The
    matrix products follow the caller's autocast, as the linear layers would: the backward
    runs under the autocast state the forward ran under (what torch.amp.custom_bwd does for
    CUDA, here for the inputs' device type, so that CPU autocast is tested in the interpreter).
    """

    @staticmethod
    def forward(
        ctx: Any, enc: Tensor, pred: Tensor, targets: Tensor, logit_lengths: Tensor,
        target_lengths: Tensor, prune_range: int, blank: int, *flat: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        from mamba_asr.ops.rnnt_triton import (
            band_join_triton,
            band_lattice_triton,
            band_logprobs_triton,
            int32_lengths,
            lattice_posteriors_triton,
            prune_ranges_triton,
            row_max_exp_triton,
            simple_grids_triton,
        )

        # an output the loss does not use (often the band's logits, (B, T, R, V)) gets None for
        # its gradient, not a tensor of zeros to allocate and add
        ctx.set_materialize_grads(False)
        w = JoinerWeights(*zip(flat[::2], flat[1::2], strict=True))
        kind = enc.device.type  # the backward runs the products under this autocast state
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        tlen, ulen = int32_lengths(logit_lengths, target_lengths, enc.device)
        targets = targets.contiguous()
        am, lm = F.linear(enc, *w.simple_am), F.linear(pred, *w.simple_lm)
        am32, lm32 = am.float().contiguous(), lm.float().contiguous()
        am_max, am_exp = row_max_exp_triton(am32)  # (B, T, 1), (B, T, V)
        lm_max, lm_exp = row_max_exp_triton(lm32)  # (B, U + 1, 1), (B, U + 1, V)
        with _autocast_off(enc.device):
            sums = torch.bmm(am_exp, lm_exp.transpose(1, 2))  # (B, T, U + 1)
        lp_blank, lp_emit = simple_grids_triton(am32, lm32, targets, sums, am_max, lm_max, blank)
        simple, pb, pe = lattice_posteriors_triton(lp_blank, lp_emit, tlen, ulen)
        u1 = pred.shape[1]
        ranges = prune_ranges_triton(pb, pe, tlen, ulen, min(prune_range, u1))  # (B, T, R)
        ep, pp = F.linear(enc, *w.enc_proj), F.linear(pred, *w.pred_proj)
        hidden = band_join_triton(ep.contiguous(), pp.contiguous(), ranges)  # (B, T, R, J)
        logits = F.linear(hidden, *w.out).contiguous()  # (B, T, R, V)
        lse, lpb, lpe, sym = band_logprobs_triton(logits, ranges, targets, blank)
        pruned, post_b, post_e = band_lattice_triton(lpb, lpe, ranges[:, :, 0], tlen, ulen, u1=u1)
        ctx.save_for_backward(
            enc, pred, *flat, am_exp, lm_exp, sums, pb, pe, targets, hidden, ranges,
            logits, lse, sym, post_b, post_e,
        )  # fmt: skip
        ctx.info = (blank, u1, am.dtype, lm.dtype, ep.dtype, pp.dtype)
        ctx.mark_non_differentiable(ranges)
        return pruned, simple, logits, ranges

    @staticmethod
    def backward(
        ctx: Any, g_pruned: Tensor | None, g_simple: Tensor | None, g_logits: Tensor | None,
        _g_ranges: Tensor | None,
    ) -> tuple[Tensor | None, ...]:  # fmt: skip
        kind, enabled, dtype = ctx.autocast
        with torch.autocast(kind, dtype=dtype, enabled=enabled):
            return _PrunedTransducerTritonFn._backward(ctx, g_pruned, g_simple, g_logits)

    @staticmethod
    def _backward(
        ctx: Any, g_pruned: Tensor | None, g_simple: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        from mamba_asr.ops.rnnt_triton import (
            band_grad_triton,
            band_join_grad_triton,
            simple_grads_triton,
        )

        enc, pred, *rest = ctx.saved_tensors
        flat, rest = rest[:10], rest[10:]
        am_exp, lm_exp, sums, pb, pe, targets, hidden, ranges, logits, lse, sym, pb2, pe2 = rest
        w = JoinerWeights(*zip(flat[::2], flat[1::2], strict=True))
        blank, u1, am_dtype, lm_dtype, ep_dtype, pp_dtype = ctx.info
        needs = ctx.needs_input_grad
        need_enc, need_pred = needs[0], needs[1]
        wneeds = needs[7:]  # (weight, bias) of each layer, in JoinerWeights' order
        grads: list[Tensor | None] = [None] * 10
        d_enc = d_pred = None

        def add(total: Tensor | None, part: Tensor | None) -> Tensor | None:
            return part if total is None else total if part is None else total + part

        # the joiner's side: pruned loss -> output layer -> band join -> projections
        if g_pruned is None:
            g_pruned = torch.zeros(enc.shape[0], device=enc.device)
        d_logits = band_grad_triton(logits, lse, sym, pb2, pe2, g_pruned, blank)
        if g_logits is not None:
            d_logits = d_logits + g_logits
        d_hidden, grads[8], grads[9] = _linear_backward(
            hidden, *w.out, d_logits, (True, wneeds[8], wneeds[9])
        )
        d_ep, d_pp = band_join_grad_triton(d_hidden, hidden, ranges, u1, ep_dtype, pp_dtype)
        d_enc, grads[4], grads[5] = _linear_backward(
            enc, *w.enc_proj, d_ep, (need_enc, wneeds[4], wneeds[5])
        )
        d_pred, grads[6], grads[7] = _linear_backward(
            pred, *w.pred_proj, d_pp, (need_pred, wneeds[6], wneeds[7])
        )
        # the simple heads
        if g_simple is not None:
            with _autocast_off(enc.device):
                d_am, d_lm = simple_grads_triton(
                    am_exp, lm_exp, sums, pb, pe, targets, g_simple, blank
                )
            dx, grads[0], grads[1] = _linear_backward(
                enc, *w.simple_am, d_am.to(am_dtype), (need_enc, wneeds[0], wneeds[1])
            )
            d_enc = add(d_enc, dx)
            dx, grads[2], grads[3] = _linear_backward(
                pred, *w.simple_lm, d_lm.to(lm_dtype), (need_pred, wneeds[2], wneeds[3])
            )
            d_pred = add(d_pred, dx)
        return d_enc, d_pred, None, None, None, None, None, *grads


def pruned_transducer_loss(
    enc: Tensor,
    pred: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    weights: JoinerWeights,
    prune_range: int,
    blank: int = 0,
    backend: str = "auto",
) -> PrunedTransducerLoss:
    """A pruned transducer's losses from its encoder output enc (B, T, M) and predictor output
    pred (B, U + 1, P), through the linear layers in ``weights``:

        simple  = rnnt_loss_simple(pred W_lm^T + b_lm, enc W_am^T + b_am)   (per utterance)
        ranges  = prune_ranges(simple's posteriors, width prune_range)
        logits  = out(band_join(enc_proj(enc), pred_proj(pred), ranges))   (B, T, R, V)
        pruned  = rnnt_loss_pruned(logits, ranges)

    targets (B, U), logit_lengths, target_lengths (B,) as in ``rnnt_loss_simple``. backend:
    "torch" runs the steps as separate ops (the reference); "triton" ("auto" on CUDA, up to
    8192 frames) runs them as one autograd node whose backward is written out
    (``_PrunedTransducerTritonFn``): the same values and gradients with far less host time.
    Under autocast the linear layers run in its dtype either way; the losses are fp32 (B,).
    """
    if enc.dim() != 3 or pred.dim() != 3 or enc.shape[0] != pred.shape[0]:
        raise ValueError(
            f"enc must be (B, T, M) and pred (B, U + 1, P), got {tuple(enc.shape)} and "
            f"{tuple(pred.shape)}"
        )
    if prune_range < 2:
        raise ValueError(f"prune_range must be >= 2, got {prune_range}")
    batch, u1 = pred.shape[:2]
    _check_targets(targets, batch, u1)
    _check_lengths(batch, logit_lengths, target_lengths)
    backend = resolve_rnnt_backend(backend, enc.device)
    if backend == "triton" and enc.shape[1] <= 8192:
        vocab = weights.out[0].shape[0]
        out = _PrunedTransducerTritonFn.apply(
            enc, pred, targets, logit_lengths, target_lengths, prune_range, blank % vocab,
            *weights.flat(),
        )  # fmt: skip
        return PrunedTransducerLoss(*out)
    return _pruned_transducer_torch(
        enc, pred, targets, logit_lengths, target_lengths, weights, prune_range, blank, backend
    )
