"""Mamba blocks: the causal block (``Mamba``) and ConMamba's bidirectional block (``BiMamba``).

Shape key
    B: batch, L: frames, M: d_model, D: d_inner (expand * d_model unless given), N: d_state,
    R: dt_rank, K: d_conv.

Both blocks take ``(B, L, M)`` and an optional ``lengths`` ``(B,)`` of valid frames; padded frames
never change valid outputs and come out as zeros. The selective scan is
``mamba_asr.ops.selective_scan.selective_scan_fn``; parameter names follow state-spaces/mamba's
``mamba_simple.py`` within each direction (``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba_asr.modules.masks import length_mask, padded_frames, reverse_index
from mamba_asr.ops.depthwise_conv import depthwise_conv1d
from mamba_asr.ops.directions import merge_directions, reverse_time, split_directions
from mamba_asr.ops.selective_scan import selective_scan_fn

__all__ = ["BiMamba", "Mamba", "MambaState"]

DT_INITS = ("random", "constant")


class MambaState(NamedTuple):
    """Streaming state of a causal ``Mamba`` block.

    conv: (B, D, K-1) the last K-1 conv inputs, in the activation dtype.
    ssm:  (B, D, N) the scan's hidden state, fp32.
    """

    conv: Tensor
    ssm: Tensor


class _SSMBranch(nn.Module):
    """One scan direction: causal depthwise conv -> SiLU -> x_proj -> dt_proj -> selective scan.

    Owns ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log`` and ``D`` (fp32, no weight decay).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        dt_init: str,
        dt_scale: float,
        dt_init_floor: float,
        conv_bias: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_state, self.d_conv, self.dt_rank = d_state, d_conv, dt_rank
        # padding=0: the causal left context is concatenated in forward (zeros or streaming state)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias, padding=0, **factory
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **factory)
        self._init_dt_proj(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        # S4D-real init: A = -(1..N) for every channel; kept fp32 on purpose
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(d_inner, 1))  # (D, N)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner, dtype=torch.float32, device=device))  # (D,)
        self.D._no_weight_decay = True

    @torch.no_grad()
    def _init_dt_proj(
        self, dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float
    ) -> None:
        """Weight uniform (or constant) at dt_rank**-0.5 * dt_scale; bias = softplus^-1(dt) with
        dt log-uniform in [dt_min, dt_max], floored at dt_init_floor."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        bias = self.dt_proj.bias
        u = torch.rand(bias.shape, device=bias.device, dtype=torch.float32)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))  # softplus(inv_softplus_dt) == dt
        bias.copy_(inv_softplus_dt)
        bias._no_reinit = True

    def forward(
        self, x: Tensor, z: Tensor, state: MambaState | None = None
    ) -> tuple[Tensor, MambaState | None]:
        """x, z: (B, D, L); state: left context, or None at the start of a sequence.

        Returns y (B, D, L) = scan(...) * silu(z) and, when a state was given, the state after
        these L frames (else None, and the scan skips its last state).
        """
        if state is None and not self.conv1d._forward_pre_hooks:  # (QAT's input quantizer: a hook)
            w, b = self.conv1d.weight[:, 0], self.conv1d.bias  # K-1 zero frames of left context
            u = depthwise_conv1d(x, w, b, left=self.d_conv - 1, activation="silu")  # (B, D, L)
        else:
            if state is None:
                xc = F.pad(x, (self.d_conv - 1, 0))  # (B, D, K-1+L), zero left context
            else:
                xc = torch.cat([state.conv.to(x.dtype), x], dim=-1)  # (B, D, K-1+L)
            u = F.silu(self.conv1d(xc))  # (B, D, L)
        x_dbl = self.x_proj(u.transpose(1, 2))  # (B, L, R+2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, D, L); bias added in scan
        out = selective_scan_fn(
            u,
            delta,
            -torch.exp(self.A_log.float()),  # A (D, N)
            B.transpose(1, 2),  # (B, N, L)
            C.transpose(1, 2),  # (B, N, L)
            self.D.float(),
            z,
            self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=state is not None,
            initial_state=None if state is None else state.ssm,
        )
        if state is None:
            return out, None
        y, ssm = out
        conv = xc[..., xc.shape[-1] - (self.d_conv - 1) :]  # (B, D, K-1), last conv inputs
        return y, MambaState(conv=conv, ssm=ssm)


def _scan_branches(branches: Sequence[_SSMBranch], x: Tensor, z: Tensor) -> Tensor:
    """G branches over G blocks of channels in one pass: each op launches once, not G times.

    x, z: (B, G*D, L), block g for ``branches[g]``. Returns (B, G*D, L), block g equal to
    ``branches[g](x_g, z_g)[0]``. The branches' weights are concatenated (conv1d, A_log, D, dt bias)
    or stacked (x_proj, dt_proj) on the fly, so gradients reach each branch's own parameters; the
    scan gets B and C as G groups of channels.
    """
    first = branches[0]
    groups, n, rank, k = len(branches), first.d_state, first.dt_rank, first.d_conv
    batch, channels, length = x.shape
    conv_w = torch.cat([b.conv1d.weight[:, 0] for b in branches])  # (G*D, K)
    conv_b = None if first.conv1d.bias is None else torch.cat([b.conv1d.bias for b in branches])
    # causal (K-1 zero frames before), SiLU: fused Triton kernels on CUDA
    u = depthwise_conv1d(x, conv_w, conv_b, left=k - 1, activation="silu")  # (B, G*D, L)
    x_w = torch.stack([b.x_proj.weight for b in branches])  # (G, R+2N, D)
    x_dbl = torch.matmul(x_w, u.view(batch, groups, -1, length))  # (B, G, R+2N, L)
    dt, B, C = x_dbl.split([rank, n, n], dim=2)  # (B, G, R, L), (B, G, N, L), (B, G, N, L)
    dt_w = torch.stack([b.dt_proj.weight for b in branches])  # (G, D, R)
    delta = torch.matmul(dt_w, dt).view(batch, channels, length)  # (B, G*D, L); bias in scan
    return selective_scan_fn(
        u,
        delta,
        -torch.exp(torch.cat([b.A_log for b in branches]).float()),  # A (G*D, N)
        B,
        C,
        torch.cat([b.D for b in branches]).float(),  # (G*D,)
        z,
        torch.cat([b.dt_proj.bias for b in branches]).float(),  # (G*D,)
        delta_softplus=True,
    )


PAD_FRAMES_ENV = "MAMBA_ASR_PAD_FRAMES"


# the multiple BiMamba's fused pass rounds its frames up to on CUDA, where MAMBA_ASR_PAD_FRAMES is
# unset (elsewhere: 1, the frames as given)
CUDA_PAD_FRAMES = 16


def scan_frames(length: int, device: torch.device | str | None = None) -> int:
    """Frames BiMamba's fused pass runs over: ``length`` rounded up to a multiple of
    ``MAMBA_ASR_PAD_FRAMES``; unset, 16 on a CUDA ``device`` and 1 (``length`` itself) elsewhere;
    never while exporting or tracing.

    The extra frames are zeros after every utterance's last (as a shorter utterance's padding
    is), so the causal conv and scan of each direction give the same outputs and gradients on
    the first ``length``; the merge reads only those. What it buys is on CUDA: with rows a
    multiple of 16 frames long, the Triton kernels load and store them as whole 16-byte vectors;
    at other lengths (750 frames for 30 s of audio) triton cannot prove the alignment, and the
    scan's kernels compile to another layout: in bf16 with two groups of B and C, 44% more
    instructions in the backward's loop over states (654 against 455), 27% more in the
    forward's (276 against 218) and 116 registers instead of 64 there (``python
    scripts/kernel_resources.py --groups 2 [--length-unaligned]``, sm_90). On an H100 the
    scan's forward+backward took 2.25 ms at 752 frames against 3.44 at 750, and the large
    ConMamba's 60 s training step 174.0 against 201.8-203.1 ms (docs/benchmarks.md). On the CPU
    the extra frames would only add work, so there it pads only when asked."""
    default = CUDA_PAD_FRAMES if torch.device(device or "cpu").type == "cuda" else 1
    raw = os.environ.get(PAD_FRAMES_ENV, str(default))
    try:
        multiple = int(raw)
    except ValueError:
        raise ValueError(f"{PAD_FRAMES_ENV} must be a positive integer, got {raw!r}") from None
    if multiple < 1:
        raise ValueError(f"{PAD_FRAMES_ENV} must be a positive integer, got {raw!r}")
    if multiple == 1 or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return length
    return -(-length // multiple) * multiple


def _resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, int) and not isinstance(dt_rank, bool) and dt_rank > 0:
        return dt_rank
    raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")


def _check_options(
    d_model: int, d_state: int, expand: int, d_conv: int, dt_init: str, d_inner: int | None
) -> None:
    sizes = {"d_model": d_model, "d_state": d_state, "expand": expand, "d_conv": d_conv}
    if d_inner is not None:
        sizes["d_inner"] = d_inner
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if dt_init not in DT_INITS:
        raise ValueError(f"dt_init must be one of {DT_INITS}, got {dt_init!r}")


class _MambaBase(nn.Module):
    """Shared parts: in_proj (M -> 2D for x and z), the forward branch ``fwd``, out_proj (D -> M),
    and ``bwd``, a second branch, when the class is bidirectional."""

    bidirectional = False

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        d_inner: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_options(d_model, d_state, expand, d_conv, dt_init, d_inner)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model if d_inner is None else d_inner
        self.dt_rank = _resolve_dt_rank(dt_rank, d_model)
        factory = {"device": device, "dtype": dtype}
        branch = dict(
            d_inner=self.d_inner,
            d_state=d_state,
            d_conv=d_conv,
            dt_rank=self.dt_rank,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_init_floor=dt_init_floor,
            conv_bias=conv_bias,
            **factory,
        )
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.fwd = _SSMBranch(**branch)
        if self.bidirectional:
            self.bwd = _SSMBranch(**branch)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _project_in(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, L, M) -> x, z each (B, D, L); x is zeroed on padded frames (mask (B, L))."""
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2D, L)
        x_in, z = xz.chunk(2, dim=1)  # (B, D, L) each
        if mask is not None:
            x_in = x_in.masked_fill(padded_frames(mask)[:, None, :], 0.0)
        return x_in, z

    def _project_out(self, y: Tensor, mask: Tensor | None) -> Tensor:
        """(B, D, L) -> (B, L, M), zero on padded frames."""
        out = self.out_proj(y.transpose(1, 2))  # (B, L, M)
        if mask is not None:
            out = out.masked_fill(padded_frames(mask)[:, :, None], 0.0)
        return out

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}"
        )


class Mamba(_MambaBase):
    """Causal Mamba block (state-spaces/mamba ``Mamba``), with padding masks and streaming.

    x (B, L, M) -> in_proj -> x, z (B, D, L) -> causal depthwise conv (K) -> SiLU -> x_proj ->
    dt (R), B, C (N) -> dt_proj -> selective scan (softplus(dt + bias), A = -exp(A_log), D skip,
    gated by SiLU(z)) -> out_proj -> (B, L, M).

    Options as in mamba: d_model, d_state=16, expand=2, d_conv=4, dt_rank="auto"
    (ceil(d_model / 16)), dt_min, dt_max, dt_init ("random" or "constant"), dt_scale,
    dt_init_floor, conv_bias, bias, d_inner (the inner width; None: expand * d_model, else it
    replaces it, e.g. in a model whose channels were pruned, ``mamba_asr.compress.prune``), and
    device/dtype for the parameters (A_log, D stay fp32).
    """

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, L, M); lengths: (B,) valid frames or None. Returns (B, L, M), zero on padding."""
        mask = None if lengths is None else length_mask(lengths, x.shape[1], x.device)
        x_in, z = self._project_in(x, mask)
        y, _ = self.fwd(x_in, z)  # (B, D, L)
        return self._project_out(y, mask)

    def init_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaState:
        """Zero state for ``batch`` streams; device and dtype default to in_proj's weight's."""
        weight = self.in_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return MambaState(
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward_chunk(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """x: (B, T, M), T >= 1 new frames. Returns y (B, T, M) and the state after them.

        Chunks run one after another from ``init_state`` give ``forward``'s output.
        """
        x_in, z = self._project_in(x, None)
        y, new_state = self.fwd(x_in, z, state)  # (B, D, T)
        return self._project_out(y, None), new_state


class BiMamba(_MambaBase):
    """ConMamba's bidirectional block ("v2" bimamba, xi-j/Mamba-ASR); not causal, no streaming.

    Shares in_proj and out_proj; the backward branch ``bwd`` (its own conv1d, x_proj, dt_proj,
    A_log, D) scans each utterance reversed within its own length. The two gated scan outputs
    are averaged before out_proj. Options as in ``Mamba``, and ``fused``: run both directions
    in one pass (2D channels, one conv, one batched projection each, one scan with two groups of
    B/C; the default), or one branch after the other (``fused=False``, the same result). The
    attribute ``fused`` may be changed on a built block; parameters are the same either way.
    The fused pass may run over more frames than given (``scan_frames``,
    ``MAMBA_ASR_PAD_FRAMES``), with the same result.
    """

    bidirectional = True

    def __init__(self, d_model: int, *args: object, fused: bool = True, **kwargs: object) -> None:
        super().__init__(d_model, *args, **kwargs)  # type: ignore[arg-type]
        self.fused = fused

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, L, M); lengths: (B,) valid frames or None. Returns (B, L, M), zero on padding."""
        length = x.shape[1]
        mask, index = None, None
        if lengths is not None:
            mask = length_mask(lengths, length, x.device)  # (B, L)
            index = reverse_index(lengths, length, x.device)  # (B, L)
        if self.fused:
            # (B, 2D, F) each: the forward branch's channels, then the backward's (reversed); F
            # frames, L or more (``scan_frames``), zeros past L
            frames = scan_frames(length, x.device)
            x2, z2 = split_directions(self._in_proj_channels_first(x), mask, index, frames=frames)
            y2 = _scan_branches((self.fwd, self.bwd), x2, z2)  # (B, 2D, F)
        else:
            x_in, z = self._project_in(x, mask)  # (B, D, L) each
            y_fwd, _ = self.fwd(x_in, z)  # (B, D, L)
            # (B, D, L), reversed
            y_bwd, _ = self.bwd(reverse_time(x_in, index), reverse_time(z, index))
            y2 = torch.cat([y_fwd, y_bwd], dim=1)
        # (B, L, M), the directions' average over the first L frames
        out = self.out_proj(merge_directions(y2, index, length=length))
        return out if mask is None else out.masked_fill(padded_frames(mask)[:, :, None], 0.0)

    def _in_proj_channels_first(self, x: Tensor) -> Tensor:
        """in_proj(x) (B, L, 2D) as a view of a (2D, B, L) product W x^T (state-spaces/mamba's
        layout): each channel's frames lie in a row, so the copies into the scan's (B, 2D, L)
        inputs move rows rather than transposing, and the gradient comes back the same way. An
        in_proj with hooks (QAT's input quantizer, pruning's statistics) is called as a module."""
        proj = self.in_proj
        if proj._forward_pre_hooks or proj._forward_hooks:
            return proj(x)
        batch, length, d_model = x.shape
        x_t = x.reshape(batch * length, d_model).T  # (M, B*L), a transposed view
        if proj.bias is None:
            xz_t = torch.matmul(proj.weight, x_t)  # (2D, B*L)
        else:
            xz_t = torch.addmm(proj.bias[:, None], proj.weight, x_t)
        return xz_t.view(-1, batch, length).permute(1, 2, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused={self.fused}"
