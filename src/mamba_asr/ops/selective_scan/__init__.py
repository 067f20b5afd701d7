"""Selective scan (Mamba's S6 recurrence) with a reference and fast paths per device.

``selective_scan_fn`` keeps the signature of state-spaces/mamba's function of the same name and adds
``initial_state`` for streaming. The implementation is picked by the input's device:

- ``cpu``: a small native kernel (compiled once, cached), else the chunked PyTorch path;
- ``mps``, ``cuda``, anything else: the chunked PyTorch path;
- ``ref``: the sequential reference (tests only).
"""

from __future__ import annotations

from mamba_asr.ops.selective_scan.dispatch import (
    BACKENDS,
    available_backends,
    export_backend,
    resolve_backend,
    selective_scan_fn,
)
from mamba_asr.ops.selective_scan.reference import selective_scan_ref

__all__ = [
    "BACKENDS",
    "available_backends",
    "export_backend",
    "resolve_backend",
    "selective_scan_fn",
    "selective_scan_ref",
]
