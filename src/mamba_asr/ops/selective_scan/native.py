"""Selective scan on the CPU through a small C kernel (``cpu_kernel.c``).

The kernel is compiled once with the system C compiler into a per-user cache and loaded with ctypes;
rows (batch x channel) are split over ``torch.get_num_threads()`` Python threads (ctypes releases the
GIL). The forward keeps one state per 64 steps; the backward recomputes each 64-step chunk from its
checkpoint, so memory stays O(B * D * (L + N * L / 64)).

``load_library()`` returns None when no compiler works (or ``MAMBA_ASR_NO_NATIVE=1``); the dispatcher
then falls back to the chunked PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("cpu_kernel.c")
# -ffast-math's parts that let the state loop vectorize, not -ffast-math itself: with -shared, gcc < 13
# links crtfastmath.o, which turns on flush-to-zero for the whole process when the library loads
_BASE_FLAGS = [
    "-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
    "-freciprocal-math", "-fPIC", "-shared",
]  # fmt: skip


class _Args(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("B", "D", "L", "N", "G")] + [
        (name, ctypes.c_void_p) for name in ("u", "dt", "A", "Bt", "Ct", "h0")
    ]


def cache_dir() -> Path:
    """Where compiled kernels live: $MAMBA_ASR_CACHE, else $XDG_CACHE_HOME/mamba_asr, else ~/.cache."""
    root = os.environ.get("MAMBA_ASR_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mamba_asr"


def _compile(out: Path) -> str | None:
    """Compile the kernel to ``out`` (atomically); return an error message or None."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "no C compiler found (set CC or install gcc/clang)"
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in (["-march=native"], []):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cc, *_BASE_FLAGS, *arch, "-o", tmp, str(_SOURCE), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)
            return None
        os.unlink(tmp)
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["?"])
    return f"{cc} failed: {errors[-1][0]}"


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL | None:
    """Compile (first time) and load the kernel; None if that is not possible here."""
    if os.environ.get("MAMBA_ASR_NO_NATIVE", "") not in ("", "0"):
        log.info("native CPU selective scan disabled by MAMBA_ASR_NO_NATIVE")
        return None
    key = hashlib.sha256(
        _SOURCE.read_bytes()
        + " ".join(_BASE_FLAGS).encode()
        + platform.machine().encode()
        + sys.platform.encode()
    ).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"selective_scan_{key}.so"
    if not path.exists():
        error = _compile(path)
        if error is not None:
            log.info(
                "native CPU selective scan unavailable (%s); using the chunked PyTorch path", error
            )
            return None
    lib = ctypes.CDLL(str(path))
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.scan_forward.argtypes = [ctypes.POINTER(_Args), i64, i64, ptr, ptr, ptr]
    lib.scan_forward.restype = None
    lib.scan_backward.argtypes = [ctypes.POINTER(_Args), i64, i64] + [ptr] * 9
    lib.scan_backward.restype = None
    return lib


def native_available() -> bool:
    return load_library() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _run_rows(fn, rows: int, per_thread_args=None) -> int:
    """Call fn(r0, r1, i) over row ranges split across torch.get_num_threads() threads."""
    n = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // n for i in range(n + 1)]
    if n == 1:
        fn(0, rows, 0)
        return 1
    with _pool_lock:
        pool = _pools.get(n) or _pools.setdefault(n, ThreadPoolExecutor(n, "mamba-asr-scan"))
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], i) for i in range(n)]
    for f in futures:
        f.result()
    return n


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _time_major(X: Tensor) -> Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, G, L, N) fp32 contiguous."""
    if X.dim() == 3:
        X = X.unsqueeze(1)
    return X.detach().to(torch.float32).transpose(-1, -2).contiguous()


def _args(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, h0: Tensor | None) -> _Args:
    batch, dim, length = u.shape
    ptrs = [_ptr(x) for x in (u, dt, A, Bt, Ct, h0)]
    return _Args(batch, dim, length, A.shape[1], Bt.shape[1], *ptrs)


class NativeSSM(torch.autograd.Function):
    """(y, last) = SSM core on the CPU kernel; see ``ssm_scan_native``."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0):
        lib = load_library()
        t = [_f32(u), _f32(dt), _f32(A), _time_major(B), _time_major(C), _f32(h0)]
        args = _args(*t)
        batch, dim, length = u.shape
        d_state = A.shape[1]
        chunks = -(-length // lib.scan_chunk_steps())
        y = u.new_empty(batch, dim, length, dtype=torch.float32)
        ckpt = u.new_empty(batch, dim, chunks, d_state, dtype=torch.float32)
        last = u.new_empty(batch, dim, d_state, dtype=torch.float32)
        _run_rows(
            lambda r0, r1, _: lib.scan_forward(
                ctypes.byref(args), r0, r1, _ptr(y), _ptr(ckpt), _ptr(last)
            ),
            batch * dim,
        )
        ctx.save_for_backward(*t, ckpt)
        ctx.dtypes = [x.dtype if x is not None else None for x in (u, dt, A, B, C, h0)]
        ctx.b_dim = B.dim()
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        lib = load_library()
        *t, ckpt = ctx.saved_tensors
        u, dt, A, Bt, Ct, h0 = t
        args = _args(*t)
        batch, dim, _ = u.shape
        dy = dy.to(torch.float32).contiguous()
        dlast = None if dlast is None else dlast.to(torch.float32).contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA_rows = u.new_empty(batch, dim, A.shape[1])
        dh0 = torch.empty_like(h0) if h0 is not None else None
        threads = max(1, min(torch.get_num_threads(), batch * dim))
        dBt = u.new_zeros(threads, *Bt.shape)  # one accumulator per thread: channels share B/C
        dCt = u.new_zeros(threads, *Ct.shape)
        _run_rows(
            lambda r0, r1, i: lib.scan_backward(
                ctypes.byref(args), r0, r1, _ptr(ckpt), _ptr(dy), _ptr(dlast), _ptr(du),
                _ptr(ddt), _ptr(dA_rows), _ptr(dBt[i]), _ptr(dCt[i]), _ptr(dh0),
            ),
            batch * dim,
        )  # fmt: skip
        dB = dBt.sum(0).transpose(-1, -2)  # (B, G, L, N) -> (B, G, N, L)
        dC = dCt.sum(0).transpose(-1, -2)
        if ctx.b_dim == 3:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        grads = (du, ddt, dA_rows.sum(0), dB, dC, dh0)
        return tuple(
            None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)
        )


def ssm_scan_native(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """SSM core on the CPU kernel: y_t = <h_t, C_t>, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t.

    u, dt: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); initial_state: (B, D, N) or None.
    Returns y (B, D, L) fp32 and the last state (B, D, N) fp32.
    """
    lib = load_library()
    if lib is None:
        raise RuntimeError(
            "the native CPU selective scan is unavailable: it needs a C compiler (gcc or clang); "
            "use backend='chunked' instead"
        )
    if A.shape[1] > lib.scan_max_state():
        raise ValueError(f"d_state={A.shape[1]} exceeds the native kernel's {lib.scan_max_state()}")
    return NativeSSM.apply(u, dt, A, B, C, initial_state)
