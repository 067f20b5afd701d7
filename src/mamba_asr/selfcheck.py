"""End-to-end self check of the building blocks on one device (``mamba-asr check``).

Runs, on random inputs:

1. a stack of causal ``Mamba`` blocks, full forward + backward (finite output and gradients);
2. the same stack chunk by chunk through ``init_state``/``forward_chunk``, against the full forward;
3. a ``BiMamba`` block on a padded batch, against each utterance alone;
4. ``selective_scan_fn`` for each backend available on the device, against ``selective_scan_ref``
   (outputs, last state and gradients of every input).

A comparison's error is ``max |x - ref| / max(1, max |ref|)``, taken per tensor (each output,
state and gradient) and maximized over them; it passes when that is at most the tolerance. All
runs are fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mamba_asr.modules.mamba import BiMamba, Mamba, MambaState
from mamba_asr.ops.selective_scan import (
    available_backends,
    selective_scan_fn,
    selective_scan_ref,
)

__all__ = ["CheckReport", "CheckResult", "run_checks"]

STREAM_TOL = 1e-4
PAD_TOL = 1e-4
SCAN_TOL = 2e-4  # as tests/ops for fp32
SCAN_MAX_LENGTH = 1024  # the reference's backward costs O(L^2) memory traffic


@dataclass(frozen=True)
class CheckResult:
    """One row of the report; ``error`` (relative, see the module doc) and ``tol`` are None for
    checks that compare nothing."""

    name: str
    passed: bool
    seconds: float
    error: float | None = None
    tol: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class CheckReport:
    device: torch.device
    threads: int
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _relative_error(pairs: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Max over pairs (x, ref) of max |x - ref| / max(1, max |ref|); one host sync per pair."""
    worst = 0.0
    for x, ref in pairs:
        ref = ref.float()
        if ref.numel() == 0:
            continue
        err = (x.float() - ref).abs().max() / ref.abs().max().clamp(min=1.0)
        worst = max(worst, err.item())
    return worst


def _compare(
    name: str, pairs: Iterable[tuple[Tensor, Tensor]], tol: float, seconds: float, detail: str = ""
) -> CheckResult:
    err = _relative_error(pairs)
    return CheckResult(name, math.isfinite(err) and err <= tol, seconds, err, tol, detail)


class _Stack(nn.Module):
    """Pre-norm residual stack of causal Mamba blocks: x <- x + block(norm(x))."""

    def __init__(self, d_model: int, n_layers: int, device: torch.device) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d_model, device=device) for _ in range(n_layers))
        self.blocks = nn.ModuleList(Mamba(d_model, device=device) for _ in range(n_layers))

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, M) -> (B, L, M)."""
        for norm, block in zip(self.norms, self.blocks, strict=True):
            x = x + block(norm(x))
        return x

    def init_state(self, batch: int) -> list[MambaState]:
        return [block.init_state(batch) for block in self.blocks]

    def forward_chunk(self, x: Tensor, states: list[MambaState]) -> tuple[Tensor, list[MambaState]]:
        """(B, T, M) and one state per block -> (B, T, M) and the new states."""
        new_states = []
        for norm, block, state in zip(self.norms, self.blocks, states, strict=True):
            y, state = block.forward_chunk(norm(x), state)
            x = x + y
            new_states.append(state)
        return x, new_states


def _check_full(model: _Stack, x: Tensor, device: torch.device) -> tuple[CheckResult, Tensor]:
    def run() -> Tensor:
        y = model(x)
        y.square().mean().backward()
        return y

    y, seconds = _timed(device, run)
    grads = [p.grad for p in model.parameters()]
    finite = torch.stack([g.isfinite().all() for g in grads if g is not None]).all()
    passed = all(g is not None for g in grads) and bool(finite) and bool(y.isfinite().all())
    batch, length, _ = x.shape
    name = f"forward + backward (B={batch}, L={length})"
    return CheckResult(name, passed, seconds, detail="finite output and gradients"), y.detach()


def _check_streaming(
    model: _Stack, x: Tensor, full: Tensor, chunk: int, device: torch.device, progress: bool
) -> CheckResult:
    starts = range(0, x.shape[1], chunk)

    def run() -> Tensor:
        states = model.init_state(x.shape[0])
        outs = []
        with torch.no_grad():
            for start in tqdm(starts, desc="streaming", disable=not progress, leave=False):
                y, states = model.forward_chunk(x[:, start : start + chunk], states)
                outs.append(y)
        return torch.cat(outs, dim=1)  # (B, L, M)

    stream, seconds = _timed(device, run)
    name = f"streaming == full ({len(starts)} chunks of {chunk})"
    per_chunk = f"{1000 * seconds / len(starts):.1f} ms/chunk"
    return _compare(name, [(stream, full)], STREAM_TOL, seconds, per_chunk)


def _check_padding(d_model: int, length: int, device: torch.device) -> CheckResult:
    block = BiMamba(d_model, device=device)
    short = max(1, (2 * length) // 3)
    x = torch.randn(2, length, d_model, device=device)
    lengths = torch.tensor([length, short], device=device)

    def run() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return block(x, lengths), block(x[1:, :short])

    (padded, alone), seconds = _timed(device, run)
    pairs = [
        (padded[1, :short], alone[0]),
        (padded[1, short:], torch.zeros_like(padded[1, short:])),
    ]
    return _compare("padded batch == alone (BiMamba)", pairs, PAD_TOL, seconds)


def _scan_inputs(batch: int, dim: int, d_state: int, length: int, device: torch.device) -> dict:
    """Random fp32 selective-scan inputs (never zeros), as in mamba's tests."""

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(*shape, device=device)).requires_grad_()

    return {
        "u": rand(batch, dim, length),
        "delta": (0.5 * torch.rand(batch, dim, length, device=device)).requires_grad_(),
        "A": (-0.5 * torch.rand(dim, d_state, device=device) - 0.1).requires_grad_(),
        "B": rand(batch, d_state, length),
        "C": rand(batch, d_state, length),
        "D": rand(dim),
        "z": rand(batch, dim, length),
        "delta_bias": (0.5 * torch.rand(dim, device=device)).requires_grad_(),
        "initial_state": rand(batch, dim, d_state, scale=0.5),
    }


def _scan_grads(fn: Callable, inputs: dict, grad_out: Tensor, grad_last: Tensor) -> list[Tensor]:
    out, last = fn(**inputs, delta_softplus=True, return_last_state=True)
    tensors = list(inputs.values())
    loss = (out * grad_out).sum() + (last * grad_last).sum()  # random cotangents
    grads = torch.autograd.grad(loss, tensors)
    return [out.detach(), last.detach(), *grads]


def _check_scan(backend: str, length: int, device: torch.device) -> CheckResult:
    inputs = _scan_inputs(2, 32, 16, min(length, SCAN_MAX_LENGTH), device)
    grad_out = torch.randn_like(inputs["u"])
    grad_last = torch.randn_like(inputs["initial_state"])

    def fast(**kw: object) -> object:
        return selective_scan_fn(**kw, backend=backend)

    results, seconds = _timed(device, lambda: _scan_grads(fast, inputs, grad_out, grad_last))
    expected = _scan_grads(selective_scan_ref, inputs, grad_out, grad_last)
    name = f"selective_scan_fn[{backend}] == ref"
    detail = f"L={inputs['u'].shape[-1]}: out, last state, 9 gradients"
    return _compare(name, zip(results, expected, strict=True), SCAN_TOL, seconds, detail)


def _scan_backends(device: torch.device) -> list[str]:
    """Backends to test on ``device``: each available one but the reference."""
    return [name for name in available_backends(device) if name != "ref"]


def run_checks(
    device: torch.device,
    length: int = 1000,
    batch: int = 2,
    d_model: int = 144,
    n_layers: int = 4,
    chunk: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> CheckReport:
    """Run every check on ``device``; raises ValueError for sizes below 1."""
    sizes = {"length": length, "batch": batch, "d_model": d_model, "layers": n_layers}
    for key, value in {**sizes, "chunk": chunk}.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    torch.manual_seed(seed)
    model = _Stack(d_model, n_layers, device)
    x = torch.randn(batch, length, d_model, device=device)
    full_result, full = _check_full(model, x, device)
    results = [full_result, _check_streaming(model, x, full, chunk, device, progress)]
    results.append(_check_padding(d_model, length, device))
    results.extend(_check_scan(name, length, device) for name in _scan_backends(device))
    return CheckReport(device, torch.get_num_threads(), tuple(results))
