"""BiMamba's inner part, from in_proj's output to out_proj's input, as one autograd node on the
Triton kernels (state-spaces/mamba's ``mamba_inner_fn`` does the same for its causal block).

Shape key: B batch, L frames, D channels of one direction, G = 2 directions, N state, R dt rank,
K conv taps, P = R + 2N (x_proj's outputs).

``bimamba_inner_fn(xz, mask, index, fwd, bwd)`` computes what ``BiMamba``'s fused path computes
with separate operators: split both directions into one (B, 2D, L) batch
(``directions.split_directions``), the causal depthwise conv with SiLU over the 2D channels,
x_proj and dt_proj per direction as two batched products, the selective scan over 2D channels
with two groups of B and C, and the average of the two directions (``merge_directions``). Its
forward runs those operators' own host code (the kernels' launch functions, the same products)
without recording them, and its backward runs their gradients in reverse, written out. The
arithmetic is the same as the separate operators', so are the results (the tests hold them to
each other); what changes is the host's work: one autograd node where the separate operators
record some 30, and the branches' weights concatenated without autograd. Training steps that
wait on the host (short utterances on a fast GPU) are what this is for.

It runs where the Triton kernels run (CUDA, or triton's interpreter) and the selective scan's
kernel is the time-parallel one; ``inner_runs_on`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mamba_asr.ops import depthwise_conv
from mamba_asr.ops.depthwise_conv_triton import conv_backward, conv_forward
from mamba_asr.ops.directions import (
    index_or_whole,
    merge_backward,
    merge_forward,
    split_backward,
    split_forward,
)
from mamba_asr.ops.selective_scan import dispatch
from mamba_asr.ops.selective_scan.triton_kernel import CONFIG, scan_inputs
from mamba_asr.ops.selective_scan.triton_time import time_scan_backward, time_scan_forward

__all__ = ["BranchParams", "bimamba_inner_fn", "inner_runs_on"]

# one direction's parameters: conv weight (D, 1, K), conv bias (D,) or None, x_proj weight
# (P, D), dt_proj weight (D, R), dt_proj bias (D,), A_log (D, N), D (D,)
BranchParams = Sequence[Tensor | None]


def inner_runs_on(device: torch.device) -> bool:
    """Whether ``bimamba_inner_fn`` runs for tensors on ``device``: the selective scan and the
    4-tap depthwise conv resolve to their Triton kernels there (with the scan's time-parallel
    kernel), and nothing is being traced or exported."""
    return (
        dispatch.resolve_backend(device) == "triton"
        and CONFIG["kernel"] == "time"
        and depthwise_conv.resolve_backend(None, 4, device) == "triton"
        and not (
            torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
        )
    )


def _cat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat(tensors).float()


class _BiMambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, mask, index, d_state, dt_rank, *params):
        conv_w, conv_b, x_w, dt_w, dt_b, A_log, D = (params[i::7] for i in range(7))
        groups, (batch, length, two_d) = len(x_w), xz.shape
        taps = conv_w[0].shape[-1]
        x2, z2 = split_forward(xz, mask, index)  # (B, G*D, L) each
        w32 = _cat(conv_w).view(-1, taps)  # (G*D, K)
        b32 = None if conv_b[0] is None else _cat(conv_b)
        u = conv_forward(x2, w32, b32, taps - 1, True)  # (B, G*D, L), causal, SiLU
        cdt = u.dtype  # the products' dtype, as autocast (or the model's dtype) gives it
        xw = torch.stack(x_w).to(cdt)  # (G, P, D)
        x_dbl = torch.matmul(xw, u.view(batch, groups, -1, length))  # (B, G, P, L)
        dt, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=2)
        dtw = torch.stack(dt_w).to(cdt)  # (G, D, R)
        delta = torch.matmul(dtw, dt).view(batch, two_d, length)  # (B, G*D, L)
        A32 = -torch.exp(_cat(A_log))  # (G*D, N)
        x = scan_inputs(u, delta, A32, B, C, _cat(D), z2, _cat(dt_b), None, True)
        y2, _last, ypre, ckpt = time_scan_forward(x, any(ctx.needs_input_grad))
        ctx.save_for_backward(mask, index, x2, w32, b32, xw, dt, dtw, *x[:9], ypre, ckpt)
        ctx.info = (x.round_gate, xz.stride(), [p.dtype if p is not None else None for p in params])
        return merge_forward(y2, index)  # (B, L, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        mask, index, x2, w32, b32, xw, dt, dtw, *scan = ctx.saved_tensors
        round_gate, xz_strides, dtypes = ctx.info
        u, A32 = scan[0], scan[2]
        batch, two_d, length = u.shape
        groups = xw.shape[0]
        dy2 = merge_backward(dy, index)  # (B, G*D, L)
        g = time_scan_backward(tuple(scan), True, round_gate, dy2, None)
        ddelta = g.ddelta.view(batch, groups, -1, length)  # (B, G, D, L)
        d_dt = torch.matmul(dtw.transpose(1, 2), ddelta)  # (B, G, R, L)
        d_dtw = torch.matmul(ddelta, dt.transpose(2, 3)).sum(0)  # (G, D, R)
        dx_dbl = torch.cat([d_dt, g.dB.to(dt.dtype), g.dC.to(dt.dtype)], dim=2)  # (B, G, P, L)
        u4 = u.view(batch, groups, -1, length)
        du = g.du + torch.matmul(xw.transpose(1, 2), dx_dbl).view(batch, two_d, length)
        d_xw = torch.matmul(dx_dbl, u4.transpose(2, 3)).sum(0)  # (G, P, D)
        dx2, dw, db = conv_backward(x2, w32, b32, du, w32.shape[1] - 1, True)
        dxz = split_backward(dx2, g.dz, mask, index, xz_strides)
        per_branch = (
            dw.view(groups, -1, 1, w32.shape[1]),
            None if b32 is None else db.view(groups, -1),
            d_xw,
            d_dtw,
            g.dbias.view(groups, -1),
            (g.dA * A32).view(groups, -1, A32.shape[1]),  # A = -exp(A_log): dA_log = dA * A
            g.dD.view(groups, -1),
        )
        grads = [
            None if grad is None else grad[i].to(dtypes[7 * i + k])
            for i in range(groups)
            for k, grad in enumerate(per_branch)
        ]
        return (dxz, None, None, None, None, *grads)


def bimamba_inner_fn(
    xz: Tensor,
    mask: Tensor | None,
    index: Tensor | None,
    fwd: BranchParams,
    bwd: BranchParams,
    d_state: int,
    dt_rank: int,
) -> Tensor:
    """xz (B, L, 2D): in_proj's [x | z] per frame, any memory layout; mask (B, L) True on valid
    frames or None; index (B, L) the per-utterance reversal (``masks.reverse_index``) or None;
    fwd, bwd: each direction's parameters (``BranchParams``). Returns (B, L, D): the average of
    the forward direction's gated scan output and the backward direction's, re-reversed.
    Differentiable in xz and every parameter."""
    index = index_or_whole(index, xz.shape[0], xz.shape[1], xz.device)
    return _BiMambaInner.apply(xz, mask, index, d_state, dt_rank, *fwd, *bwd)
