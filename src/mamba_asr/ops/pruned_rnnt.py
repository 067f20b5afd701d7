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
    "PrunedInputs",
    "SimpleLoss",
    "band_join",
    "do_rnnt_pruning",
    "prune_ranges",
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
