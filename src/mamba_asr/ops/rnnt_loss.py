"""RNN-Transducer loss in plain PyTorch (CPU, MPS, CUDA), compatible with torchaudio's.

Shape key
    B: batch, T: frames (max of logit_lengths), U: target tokens (max of target_lengths),
    V: vocabulary (blank included), N = T + U: anti-diagonals t + u = n of the (T, U + 1) lattice.

Three parts, as every op here:
    _RNNTLossFn     autograd Function: forward (alpha) and backward (beta) recursions over the lattice of
                    blank / emission log-probabilities, one vectorized step per anti-diagonal (a Python
                    loop of T + U steps), and the analytic gradient w.r.t. the logits; it saves only
                    (B, T, U + 1) tensors besides the logits, never a (B, T, U + 1, V) one.
    rnnt_loss       the wrapper: checks, lengths -> lattice masks, reduction.
    rnnt_loss_ref   brute force over every alignment path (autograd for its gradient), tiny cases only.
    rnnt_lattice    the same recursions on (B, T, U + 1) blank / emission log-prob grids from
                    elsewhere (``ops.pruned_rnnt``), returning the move posteriors as well.

Backends of the alpha / beta recursions (``backend=`` of every loss here, or the environment
variable MAMBA_ASR_RNNT_BACKEND when the argument is "auto"): "torch", the anti-diagonal loop
above, and "triton" (``ops.rnnt_triton``), both tables in one kernel launch, for CUDA tensors (CPU
tensors only under TRITON_INTERPRET=1). "auto" is "triton" on CUDA tensors where triton is
installed (on the H100 it makes the pruned loss 36x and the full loss 8.8x faster than "torch":
docs/benchmarks.md) and "torch" everywhere else. For the full loss only the alpha / beta tables
come from the kernels; ``rnnt_lattice`` also takes its posteriors from a kernel, and the simple
and pruned losses of ``ops.pruned_rnnt`` run kernels of their own there. ``lattice_torch`` and
``ops.rnnt_triton.lattice_triton`` (same arguments) give those tables of each backend.

Everything inside runs in fp32, whatever the logits' dtype; the loss comes back in the logits' dtype.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BACKEND_ENV",
    "REDUCTIONS",
    "RNNT_BACKENDS",
    "LatticeResult",
    "apply_reduction",
    "lattice_torch",
    "resolve_rnnt_backend",
    "rnnt_lattice",
    "rnnt_loss",
    "rnnt_loss_ref",
]

REDUCTIONS = ("mean", "sum", "none")
RNNT_BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "MAMBA_ASR_RNNT_BACKEND"


def resolve_rnnt_backend(backend: str, device: torch.device) -> str:
    """The recursions' backend ("torch" or "triton") that ``backend`` means on ``device``.

    "auto" reads MAMBA_ASR_RNNT_BACKEND; when that is unset or "auto" it means "triton" for CUDA
    tensors where triton is installed and "torch" otherwise. Raises ValueError for an unknown
    name, RuntimeError when triton is asked for but cannot run here.
    """
    if backend not in RNNT_BACKENDS:
        raise ValueError(f"RNN-T backend must be one of {RNNT_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV) or "auto"
        if backend not in RNNT_BACKENDS:
            raise ValueError(f"{BACKEND_ENV} must be one of {RNNT_BACKENDS}, got {backend!r}")
    if backend == "auto":
        cuda_triton = device.type == "cuda" and importlib.util.find_spec("triton") is not None
        return "triton" if cuda_triton else "torch"
    if backend != "triton":
        return "torch"
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError(
            "the triton RNN-T backend needs triton: pip install 'mamba-asr[cuda]' (or use "
            "backend='torch')"
        )
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpreted):
        raise RuntimeError(
            f"the triton RNN-T backend runs on CUDA tensors (CPU tensors only under "
            f"TRITON_INTERPRET=1), got {device.type} tensors: use backend='torch'"
        )
    return "triton"


def _check_inputs(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
) -> None:
    """Raise ValueError naming the argument that does not fit."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (batch, T, U + 1, V), got shape {tuple(logits.shape)}")
    batch, _, u1, vocab = logits.shape
    if targets.dim() != 2 or targets.shape != (batch, u1 - 1):
        raise ValueError(
            f"targets must be (batch, U)={(batch, u1 - 1)} for logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    for name, t in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if t.shape != (batch,):
            raise ValueError(f"{name} must be (batch={batch},), got {tuple(t.shape)}")
    if not -vocab <= blank < vocab:
        raise ValueError(f"blank={blank} is out of range for a vocabulary of {vocab}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _log_probs(logits: Tensor, fused_log_softmax: bool) -> Tensor:
    """(B, T, U + 1, V) logits -> fp32 log-probabilities."""
    x = logits.float()
    return torch.log_softmax(x, dim=-1) if fused_log_softmax else x


def _skew_index(frames: int, u1: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Index t = n - u (clamped) and its validity, both (N, U + 1), for the diagonal layout."""
    n = torch.arange(frames + u1 - 1, device=device)[:, None]
    u = torch.arange(u1, device=device)[None, :]
    t = n - u  # (N, U + 1)
    return t.clamp(0, frames - 1), (t >= 0) & (t < frames)


def _skew(x: Tensor, t_idx: Tensor, inside: Tensor, fill: float) -> Tensor:
    """(B, T, U + 1) -> (B, N, U + 1) with out[b, n, u] = x[b, n - u, u] (fill off the grid)."""
    batch = x.shape[0]
    out = x.gather(1, t_idx.expand(batch, -1, -1))  # (B, N, U + 1)
    return out.masked_fill(~inside, fill)


def _unskew(s: Tensor, frames: int) -> Tensor:
    """(B, N, U + 1) -> (B, T, U + 1) with out[b, t, u] = s[b, t + u, u]."""
    batch, _, u1 = s.shape
    t = torch.arange(frames, device=s.device)[:, None]
    u = torch.arange(u1, device=s.device)[None, :]
    return s.gather(1, (t + u).expand(batch, -1, -1))  # (B, T, U + 1)


def _shift(x: Tensor, step: int) -> Tensor:
    """Shift along the last dim by `step` (+1: right, -1: left), filling with -inf."""
    pad = (1, 0) if step > 0 else (0, 1)
    cut = x[..., :-1] if step > 0 else x[..., 1:]
    return torch.nn.functional.pad(cut, pad, value=float("-inf"))


def _valid_masks(
    frames: int, u1: int, logit_lengths: Tensor, target_lengths: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Lattice cells inside each utterance and each utterance's last cell, both (B, T, U + 1)."""
    t = torch.arange(frames, device=device)[None, :, None]
    u = torch.arange(u1, device=device)[None, None, :]
    tl = logit_lengths.to(device).long()[:, None, None]
    ul = target_lengths.to(device).long()[:, None, None]
    return (t < tl) & (u <= ul), (t == tl - 1) & (u == ul)


def _lattice_forward(
    lp_blank: Tensor, lp_emit: Tensor, valid: Tensor, final: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha and beta (B, T, U + 1) and log P(y|x) (B,) by anti-diagonal recursions."""
    batch, frames, u1 = lp_blank.shape
    t_idx, inside = _skew_index(frames, u1, lp_blank.device)
    neg_inf = float("-inf")
    blank_s = _skew(lp_blank, t_idx, inside, neg_inf)  # (B, N, U + 1)
    emit_s = _skew(lp_emit, t_idx, inside, neg_inf)  # (B, N, U + 1)
    valid_s = _skew(valid.float(), t_idx, inside, 0.0) > 0  # (B, N, U + 1)
    final_s = _skew(final.float(), t_idx, inside, 0.0) > 0  # (B, N, U + 1)
    diags = blank_s.shape[1]

    # alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u), alpha(t, u-1) + emit(t, u-1))
    a = torch.full((batch, u1), neg_inf, device=lp_blank.device)
    a[:, 0] = 0.0
    alphas = [a]
    for n in range(1, diags):
        a = torch.logaddexp(a + blank_s[:, n - 1], _shift(a + emit_s[:, n - 1], 1))
        a = a.masked_fill(~valid_s[:, n], neg_inf)
        alphas.append(a)
    alpha = _unskew(torch.stack(alphas, 1), frames)  # (B, T, U + 1)

    # beta(t, u) = logaddexp(blank(t, u) + beta(t+1, u), emit(t, u) + beta(t, u+1)),
    # with beta(T_b, U_b) = 0, so beta at the last cell is its blank.
    b = torch.full((batch, u1), neg_inf, device=lp_blank.device)
    betas = []
    for n in range(diags - 1, -1, -1):
        b = torch.logaddexp(blank_s[:, n] + b, emit_s[:, n] + _shift(b, -1))
        b = torch.where(final_s[:, n], blank_s[:, n], b).masked_fill(~valid_s[:, n], neg_inf)
        betas.append(b)
    beta = _unskew(torch.stack(betas[::-1], 1), frames)  # (B, T, U + 1)
    return alpha, beta, beta[:, 0, 0]


def lattice_torch(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha and beta (B, T, U + 1) and log P(y|x) (B,) by the "torch" backend's recursions.

    lp_blank, lp_emit: (B, T, U + 1) fp32 log-probs of the blank and emission moves (as
    ``rnnt_lattice`` takes them); logit_lengths, target_lengths: (B,). The same arguments and
    results as ``ops.rnnt_triton.lattice_triton``; no gradient flows through the tables.
    """
    frames, u1 = lp_blank.shape[1:]
    valid, final = _valid_masks(frames, u1, logit_lengths, target_lengths, lp_blank.device)
    return _lattice_forward(lp_blank, lp_emit, valid, final)


def _alpha_beta(
    lp_blank: Tensor,
    lp_emit: Tensor,
    valid: Tensor,
    final: Tensor,
    lengths: tuple[Tensor, Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``_lattice_forward``'s alpha, beta and log P(y|x) from the resolved ``backend``;
    lengths: (logit_lengths, target_lengths), what the triton kernels read instead of the masks."""
    if backend == "triton":
        from mamba_asr.ops.rnnt_triton import lattice_triton

        return lattice_triton(lp_blank, lp_emit, *lengths)
    return _lattice_forward(lp_blank, lp_emit, valid, final)


def _lattice_grads(
    lp_blank: Tensor,
    lp_emit: Tensor,
    alpha: Tensor,
    beta: Tensor,
    log_p: Tensor,
    final: Tensor,
    grad_out: Tensor,
) -> tuple[Tensor, Tensor]:
    """d(sum_b grad_out_b * loss_b) / d(lp_blank, lp_emit), both (B, T, U + 1): -posterior of each move."""
    neg_inf = float("-inf")
    # beta after a blank at (t, u): beta(t + 1, u), or 0 after the last cell
    beta_next_t = torch.nn.functional.pad(beta[:, 1:], (0, 0, 0, 1), value=neg_inf)
    beta_next_t = beta_next_t.masked_fill(final, 0.0)  # (B, T, U + 1)
    beta_next_u = _shift(beta, -1)  # (B, T, U + 1): beta(t, u + 1)
    scale = -grad_out.float()[:, None, None]
    a = alpha - log_p[:, None, None]  # (B, T, U + 1)
    g_blank = scale * torch.exp(a + lp_blank + beta_next_t)
    g_emit = scale * torch.exp(a + lp_emit + beta_next_u)  # 0 at u = U (lp_emit = -inf)
    return g_blank, g_emit


class LatticeResult(NamedTuple):
    """``rnnt_lattice``'s result: per-utterance -log P(y|x) (B,) and, both (B, T, U + 1), the
    posterior probability of the blank and of the emission move out of each lattice cell."""

    nll: Tensor
    blank_posterior: Tensor
    emit_posterior: Tensor


class _LatticeFn(torch.autograd.Function):
    """-log P(y|x) (B,) from (B, T, U + 1) blank / emission log-prob grids; the move posteriors
    come out too (non-differentiable) and are the whole backward: d nll / d lp = -posterior."""

    @staticmethod
    def forward(
        ctx: Any,
        lp_blank: Tensor,
        lp_emit: Tensor,
        valid: Tensor,
        final: Tensor,
        lengths: tuple[Tensor, Tensor],
        backend: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        alpha, beta, log_p = _alpha_beta(lp_blank, lp_emit, valid, final, lengths, backend)
        ones = torch.ones_like(log_p)
        g_blank, g_emit = _lattice_grads(lp_blank, lp_emit, alpha, beta, log_p, final, ones)
        feasible = torch.isfinite(log_p)[:, None, None]  # no path: posteriors (and grads) 0
        post_blank = torch.where(feasible, -g_blank, 0.0)  # (B, T, U + 1)
        post_emit = torch.where(feasible, -g_emit, 0.0)  # (B, T, U + 1)
        ctx.save_for_backward(post_blank, post_emit)
        ctx.mark_non_differentiable(post_blank, post_emit)
        return -log_p, post_blank, post_emit

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        post_blank, post_emit = ctx.saved_tensors
        scale = -grad_out.float()[:, None, None]
        return scale * post_blank, scale * post_emit, None, None, None, None


class _LatticeTritonFn(torch.autograd.Function):
    """``_LatticeFn`` on the triton backend: the alpha and beta tables in one launch, then the
    posteriors and -log P(y|x) in another (``ops.rnnt_triton.lattice_posteriors_triton``)."""

    @staticmethod
    def forward(
        ctx: Any, lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        from mamba_asr.ops.rnnt_triton import lattice_posteriors_triton

        nll, post_blank, post_emit = lattice_posteriors_triton(
            lp_blank, lp_emit, logit_lengths, target_lengths
        )
        ctx.save_for_backward(post_blank, post_emit)
        ctx.mark_non_differentiable(post_blank, post_emit)
        return nll, post_blank, post_emit

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        post_blank, post_emit = ctx.saved_tensors
        scale = -grad_out.float()[:, None, None]
        return scale * post_blank, scale * post_emit, None, None


def rnnt_lattice(
    lp_blank: Tensor,
    lp_emit: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    backend: str = "auto",
) -> LatticeResult:
    """RNN-T forward-backward on log-prob grids, differentiable w.r.t. both grids.

    lp_blank, lp_emit: (B, T, U + 1) fp32 log-probabilities of the blank (t -> t + 1) and of the
    emission of token u + 1 (u -> u + 1) at each cell (-inf: the move is not allowed; the
    emission column u = U is never used); logit_lengths, target_lengths: (B,).
    The grids come from anything: the full joint (``rnnt_loss``), the "simple" joint of
    ``ops.pruned_rnnt`` or a band of the lattice scattered into a -inf grid.
    An utterance with no path gets nll = inf and zero posteriors.
    backend: "auto", "torch" or "triton" for the alpha / beta recursions (module docstring).
    """
    backend = resolve_rnnt_backend(backend, lp_blank.device)
    if backend == "triton":
        return LatticeResult(
            *_LatticeTritonFn.apply(lp_blank, lp_emit, logit_lengths, target_lengths)
        )
    frames, u1 = lp_blank.shape[1:]
    valid, final = _valid_masks(frames, u1, logit_lengths, target_lengths, lp_blank.device)
    lengths = (logit_lengths, target_lengths)
    return LatticeResult(*_LatticeFn.apply(lp_blank, lp_emit, valid, final, lengths, backend))


class _RNNTLossFn(torch.autograd.Function):
    """Per-utterance -log P(y|x) (B,) from the logits, with the analytic gradient w.r.t. the logits.

    Saves only (B, T, U + 1) tensors besides the logits; the backward builds the (B, T, U + 1, V)
    gradient once: softmax * (sum of the move gradients) - ..., then adds the blank / target columns.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        valid: Tensor,
        final: Tensor,
        blank: int,
        fused: bool,
        clamp: float,
        lengths: tuple[Tensor, Tensor],
        backend: str,
    ) -> Tensor:
        batch, frames, u1, _ = logits.shape
        x = logits.float()
        idx = targets.long()[:, None, :, None].expand(batch, frames, u1 - 1, 1)  # (B, T, U, 1)
        lp_blank = x[..., blank]  # (B, T, U + 1)
        lp_emit = x[:, :, : u1 - 1].gather(-1, idx).squeeze(-1)  # (B, T, U)
        lp_emit = torch.nn.functional.pad(lp_emit, (0, 1), value=float("-inf"))  # (B, T, U + 1)
        lse = torch.logsumexp(x, dim=-1) if fused else None  # (B, T, U + 1)
        if lse is not None:
            lp_blank, lp_emit = lp_blank - lse, lp_emit - lse
        alpha, beta, log_p = _alpha_beta(lp_blank, lp_emit, valid, final, lengths, backend)
        ctx.save_for_backward(logits, idx, lp_blank, lp_emit, alpha, beta, log_p, final, lse)
        ctx.blank, ctx.clamp = blank, clamp
        return -log_p

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        logits, idx, lp_blank, lp_emit, alpha, beta, log_p, final, lse = ctx.saved_tensors
        g_blank, g_emit = _lattice_grads(lp_blank, lp_emit, alpha, beta, log_p, final, grad_out)
        u = logits.shape[2] - 1
        if lse is None:  # logits are log-probs: the move gradients are the gradient
            grad = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        else:  # d lp_v / d x_w = [v = w] - softmax_w
            grad = torch.sub(logits.float(), lse[..., None]).exp_()  # (B, T, U + 1, V) softmax
            grad.mul_(-(g_blank + g_emit)[..., None])
        grad[..., ctx.blank] += g_blank
        grad[:, :, :u].scatter_add_(-1, idx, g_emit[:, :, :u, None])
        if ctx.clamp > 0:
            grad.clamp_(-ctx.clamp, ctx.clamp)
        return grad.to(logits.dtype), None, None, None, None, None, None, None, None


class _ClampGrad(torch.autograd.Function):
    """Identity whose backward clamps the gradient to [-clamp, clamp] (torchaudio's `clamp`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, clamp: float) -> Tensor:
        ctx.clamp = clamp
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp(-ctx.clamp, ctx.clamp), None


def apply_reduction(losses: Tensor, reduction: str) -> Tensor:
    """(B,) per-utterance losses -> their mean or sum (a scalar), or themselves for "none"."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    clamp: float = -1,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
    backend: str = "auto",
) -> Tensor:
    """RNN-Transducer loss -log P(y|x), argument for argument like `torchaudio.functional.rnnt_loss`.

    logits: (B, T, U + 1, V) joint-network outputs (any float dtype; computed in fp32);
    targets: (B, U) integer token ids (padding beyond target_lengths is ignored);
    logit_lengths: (B,) frames per utterance T_b <= T, at least 1;
    target_lengths: (B,) tokens per utterance U_b <= U.
    blank: index of the blank token (negative counts from the end of V).
    clamp: if > 0, the gradient w.r.t. logits is clamped to [-clamp, clamp].
    reduction: "mean" (over the batch), "sum" or "none" ((B,) per-utterance losses).
    fused_log_softmax: apply log_softmax over V here; if False, logits are log-probabilities already.
    backend: "auto", "torch" or "triton" for the alpha / beta recursions (module docstring).

    Each utterance's loss is -(alpha(T_b - 1, U_b) + log p(blank | T_b - 1, U_b)); logits at t >= T_b or
    u > U_b take no part in it. Returns the loss in the logits' dtype.
    """
    _check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction)
    backend = resolve_rnnt_backend(backend, logits.device)
    _, frames, u1, vocab = logits.shape
    blank = blank % vocab
    valid, final = _valid_masks(frames, u1, logit_lengths, target_lengths, logits.device)
    lengths = (logit_lengths, target_lengths)
    losses = _RNNTLossFn.apply(
        logits, targets, valid, final, blank, fused_log_softmax, float(clamp), lengths, backend
    )  # (B,)
    return apply_reduction(losses, reduction).to(logits.dtype)


def rnnt_loss_ref(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    clamp: float = -1,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
) -> Tensor:
    """Brute-force RNN-T loss: logsumexp over every alignment path. Tiny cases only (T <= 4, U <= 3).

    Same signature and shapes as `rnnt_loss`. A path from (0, 0) to (T_b - 1, U_b) makes T_b - 1 blank
    moves (t + 1) and U_b emissions (u + 1) in some order, then one final blank.
    """
    _check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction)
    vocab = logits.shape[-1]
    blank = blank % vocab
    x = _ClampGrad.apply(logits, float(clamp)) if clamp > 0 else logits
    lp = _log_probs(x, fused_log_softmax)  # (B, T, U + 1, V)
    losses = []
    for b in range(logits.shape[0]):
        frames, n_tok = int(logit_lengths[b]), int(target_lengths[b])
        y = [int(v) for v in targets[b, :n_tok]]
        paths = []
        for emit_steps in itertools.combinations(range(frames - 1 + n_tok), n_tok):
            t = u = 0
            terms = []
            for step in range(frames - 1 + n_tok):
                if step in emit_steps:
                    terms.append(lp[b, t, u, y[u]])
                    u += 1
                else:
                    terms.append(lp[b, t, u, blank])
                    t += 1
            terms.append(lp[b, t, u, blank])
            paths.append(torch.stack(terms).sum())
        losses.append(-torch.logsumexp(torch.stack(paths), 0))
    return apply_reduction(torch.stack(losses), reduction).to(logits.dtype)
