"""Triton kernel launches with less host time, for kernels launched many times a step.

``kernel[grid](*args, **meta)`` goes through triton's JIT on every call: it binds the arguments,
specializes them, builds a cache key, checks the kernel's globals and makes launch metadata, about
20-25 us of host time on an H200's host, where an aten op takes 6-7 us. A step of the pruned
RNN-T loss makes 15 such launches. ``launch`` keeps the compiled kernel of each specialization
itself: its key is what triton specializes on (each argument through triton's own
``native_specialize_impl``: a tensor's dtype and 16-byte alignment, an int's width, whether it is
1 and whether it divides by 16; the constexprs' values; num_warps, num_stages; the device), so a
cached kernel is the one triton would pick. The first call of a key goes through triton (and
compiles); later ones call the compiled kernel's launcher directly.

The direct path is taken with MAMBA_ASR_TRITON_LAUNCH=direct; by default (or "jit") every call
goes through triton, as it does under TRITON_INTERPRET=1 and with a launch hook installed
(triton's profilers add them to ``triton.knobs.runtime``). It stays opt-in because it measured
no better: the CUDA tests pass with it (tests/ops/test_triton_launch.py and the kernels' own, on
an H100), but the pruned RNN-T step's host time fell only from 2.73 to 2.61 ms
(scripts/device/rnnt_host.py, H200), and for the selective scan the 400 launches of a cProfiled
run took 62 ms against triton's 63 (scripts/device/scan_host.py, H100; the per-argument
specialisation left in Python costs what triton's binder does); the large encoders' steps did
not move beyond their spread (docs/benchmarks.md). It also calls the compiled kernel's launcher
the way triton 3.6's ``JITFunction.run`` does, an interface triton does not promise to keep.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["LAUNCH_ENV", "cdiv", "launch", "next_pow2"]

LAUNCH_ENV = "MAMBA_ASR_TRITON_LAUNCH"

# kernel -> (parameter names, whether each is a constexpr, defaults)
_SIGNATURES: dict[Any, tuple[tuple[str, ...], tuple[bool, ...], dict[str, Any]]] = {}
# specialization key -> the compiled kernel
_COMPILED: dict[tuple, Any] = {}


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): ``triton.next_power_of_2`` as plain
    Python (triton's is a constexpr function, about 2 us a call on the host)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b."""
    return -(-a // b)


def _hooked(hook: Any) -> bool:
    """Whether a launch hook of triton's knobs would do anything (triton 3.6 keeps an empty
    HookChain there, which triton's own launches call twice per launch)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _direct() -> bool:
    if os.environ.get(LAUNCH_ENV, "jit") != "direct" or os.environ.get("TRITON_INTERPRET") == "1":
        return False  # the default: nothing more on the way to triton's own launch
    from triton import knobs

    return not _hooked(knobs.runtime.launch_enter_hook) and not _hooked(
        knobs.runtime.launch_exit_hook
    )


def _raw_stream(device: int) -> int:
    """The current CUDA stream's handle, as triton's driver gets it."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get(device) if get is not None else torch.cuda.current_stream(device).cuda_stream


def _signature(kernel: Any) -> tuple[tuple[str, ...], tuple[bool, ...], dict[str, Any]]:
    sig = _SIGNATURES.get(kernel)
    if sig is None:
        params = kernel.params
        defaults = {p.name: p.default for p in params if p.has_default}
        sig = (tuple(p.name for p in params), tuple(p.is_constexpr for p in params), defaults)
        _SIGNATURES[kernel] = sig
    return sig


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, num_warps: int = 4,
           num_stages: int | None = None, maxnreg: int | None = None, **meta: Any) -> None:  # fmt: skip
    """``kernel[grid](*args, **meta, num_warps=..., num_stages=..., maxnreg=...)``, through a cache
    of compiled kernels keyed by triton's own specialization of the arguments (see the module's
    doc). args: the kernel's leading parameters in order; meta: the others by name (constexprs);
    maxnreg: the most registers a thread may take (None: as ptxas chooses)."""
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    if not _direct():
        kernel[grid](*args, **meta, **options)
        return
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    names, is_const, defaults = _signature(kernel)
    values = (*args, *(meta[n] if n in meta else defaults[n] for n in names[len(args) :]))
    spec = tuple(
        v if c else native_specialize_impl(BaseBackend, v, False, True, True)
        for v, c in zip(values, is_const, strict=True)
    )
    device = torch.cuda.current_device()
    key = (kernel, device, num_warps, num_stages, maxnreg, spec)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, **meta, **options)
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        _COMPILED[key] = compiled
        return
    grid3 = (*grid, 1, 1)
    stream = _raw_stream(device)
    compiled.run(grid3[0], grid3[1], grid3[2], stream, compiled.function,
                 compiled.packed_metadata, None, None, None, *values)  # fmt: skip
