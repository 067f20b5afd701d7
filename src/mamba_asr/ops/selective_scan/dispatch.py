"""The selective scan every model calls: elementwise parts in PyTorch, the recurrence in a backend.

``selective_scan_fn`` computes dt = softplus(delta + delta_bias), the D skip and the z gate with plain
PyTorch ops (autograd handles them) and hands the recurrence to a backend core (the Triton kernels
fuse those parts in instead):

- ``native``: the C kernel on the CPU (``native.py``), compiled once and cached;
- ``triton``: fused Triton kernels on CUDA (``triton_kernel.py``), when triton is installed;
- ``chunked``: chunked PyTorch (``chunked.py``), for MPS and any other device;
- ``exportable``: PyTorch's ``scan`` operator (``exportable.py``), one ONNX ``Scan`` in exported graphs;
- ``unrolled``: the same steps in a Python loop (``exportable.py``), which export writes out frame by
  frame: graphs of one fixed chunk length without control flow (Core ML), or, with ``steps``,
  of any length up to ``steps`` frames (ONNX ``encoder_chunk.onnx``);
- ``ref``: the sequential reference (``reference.py``), for tests.

``auto`` picks ``native`` for CPU tensors and ``triton`` for CUDA tensors when they are available,
``chunked`` otherwise (with one INFO log line saying why), and ``exportable`` while the model is
being traced for export (``torch.compiler.is_exporting()``: ``torch.export``, ONNX), so the
model's own ``forward_chunk`` exports as it is; ``with export_backend("unrolled"):`` makes it
``unrolled`` instead, for the exports made inside the block. A backend asked for by name that
cannot run raises an error saying why and how to get it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba_asr.ops.selective_scan.chunked import ssm_scan_chunked
from mamba_asr.ops.selective_scan.exportable import ssm_scan_exportable, ssm_scan_unrolled
from mamba_asr.ops.selective_scan.native import native_available, ssm_scan_native
from mamba_asr.ops.selective_scan.reference import check_inputs, selective_scan_ref, silu_gate

log = logging.getLogger(__name__)

BACKENDS = ("auto", "native", "triton", "chunked", "exportable", "unrolled", "ref")
EXPORT_BACKENDS = ("exportable", "unrolled")
_export_backend: ContextVar[str] = ContextVar("selective_scan_export_backend", default="exportable")
_unroll_steps: ContextVar[int | None] = ContextVar("selective_scan_unroll_steps", default=None)


@cache
def triton_available() -> bool:
    """True when triton imports (it is the ``[cuda]`` extra)."""
    return importlib.util.find_spec("triton") is not None


_CORES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "native": ssm_scan_native,
    "chunked": ssm_scan_chunked,
    "exportable": ssm_scan_exportable,
    "unrolled": ssm_scan_unrolled,
}


@contextmanager
def export_backend(name: str, steps: int | None = None) -> Iterator[None]:
    """What ``auto`` resolves to while a model is exported inside this block: ``exportable``
    (the default; one ``scan`` op, chunks of any length) or ``unrolled`` (a fixed length; with
    ``steps``, always that many steps, so any length up to ``steps``)."""
    if name not in EXPORT_BACKENDS:
        raise ValueError(f"the export backend must be one of {EXPORT_BACKENDS}, got {name!r}")
    if steps is not None and (name != "unrolled" or steps < 1):
        raise ValueError(f"steps applies to the unrolled backend and must be >= 1, got {steps!r}")
    token = _export_backend.set(name)
    steps_token = _unroll_steps.set(steps)
    try:
        yield
    finally:
        _unroll_steps.reset(steps_token)
        _export_backend.reset(token)


def triton_runs_on(device: torch.device) -> bool:
    """Whether triton's kernels run for tensors on ``device``: triton installed, and CUDA (or
    triton's CPU interpreter, TRITON_INTERPRET=1, as the tests run it)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # triton's CPU interpreter (tests)
    return triton_available() and (device.type == "cuda" or interpreted)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` here (``auto`` excluded)."""
    device = torch.device(device)
    found = ["chunked", "ref"]
    if device.type == "cuda" and triton_runs_on(device):
        found.insert(0, "triton")
    if device.type == "cpu" and native_available():
        found.insert(0, "native")
    return found


@cache
def _log_fallback(device_type: str) -> None:
    log.info(
        "triton is not installed: the selective scan on %s uses the chunked PyTorch path "
        "(pip install 'mamba-asr[cuda]' for the fused kernel)",
        device_type,
    )


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend ``auto`` means for ``device``; validates explicit names."""
    if backend not in BACKENDS:
        raise ValueError(f"selective scan backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" and device.type != "cpu":
        raise ValueError(f"the native selective scan runs on the CPU only, not on {device.type}")
    if backend == "triton" and not triton_runs_on(device):
        if not triton_available():
            raise ValueError(
                "the triton selective scan needs triton: pip install 'mamba-asr[cuda]'"
            )
        raise ValueError(f"the triton selective scan runs on CUDA only, not on {device.type}")
    if backend != "auto":
        return backend
    if torch.compiler.is_exporting():  # traced for a graph: no kernel, no loop over time
        return _export_backend.get()
    if device.type == "cpu" and native_available():
        return "native"
    if device.type == "cuda":
        if triton_runs_on(device):
            return "triton"
        _log_fallback(device.type)
    return "chunked"


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan; arguments, shapes and results as ``selective_scan_ref``.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,);
    initial_state: (B, D, N). Returns out (B, D, L) in u's dtype and, with return_last_state, the
    last state (B, D, N) fp32. Differentiable in every tensor input, the last state included.
    """
    name = resolve_backend(u.device, backend)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)
    if name == "ref":
        return selective_scan_ref(*args)
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if name == "triton":  # fused: the elementwise parts run inside the kernel
        from mamba_asr.ops.selective_scan.triton_kernel import selective_scan_triton

        return selective_scan_triton(*args)
    u32 = u.float()
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h0 = None if initial_state is None else initial_state.float()
    if name == "unrolled" and _unroll_steps.get() is not None:
        y, last = ssm_scan_unrolled(
            u32, dt, A.float(), B.float(), C.float(), h0, steps=_unroll_steps.get()
        )
    else:
        y, last = _CORES[name](u32, dt, A.float(), B.float(), C.float(), h0)
    if D is not None:
        y = y + u32 * D.float()[:, None]
    if z is not None:
        y = y * silu_gate(z)
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out
