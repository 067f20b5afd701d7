"""The CUDA paths' host code on a CPU, with no kernel launched: for the scripts that measure the
host's side of a training step (``host_proxy.py``) or the bytes its operators write
(``encoder_writes.py``) without a GPU.

Inside ``cuda_host_paths()`` the selective scan takes its Triton time kernels' autograd Function,
the depthwise convs and BiMamba's reshuffles their Triton kernels' Functions, each with
``ops.triton_launch.launch`` replaced by ``no_launch``: the operators and allocations around the
kernels are those a GPU runs, and what the kernels would write is left uninitialised (their
outputs' bytes are right, the values are not). Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import mamba_asr.modules.mamba as mamba_module
import mamba_asr.ops.depthwise_conv as depthwise_conv
import mamba_asr.ops.depthwise_conv_triton as depthwise_conv_triton
import mamba_asr.ops.directions as directions
import mamba_asr.ops.directions_triton as directions_triton
import mamba_asr.ops.selective_scan.triton_time as triton_time
from mamba_asr.ops.selective_scan.triton_kernel import CONFIG, selective_scan_triton


def no_launch(kernel, grid, *args, **kwargs) -> None:
    """Stands in for ``ops.triton_launch.launch``: no kernel runs."""


def scan_without_kernels(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False, initial_state=None):  # fmt: skip
    """``selective_scan_fn``'s Triton path, whatever the tensors' device."""
    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                 return_last_state, initial_state)  # fmt: skip


@contextlib.contextmanager
def cuda_host_paths() -> Iterator[None]:
    """While open, the scan's time kernels, the depthwise conv's and the reshuffles' Triton kernels
    take their CUDA host code on the CPU, with nothing launched."""
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context
        patch(mock.patch.dict(CONFIG, kernel="time"))
        patch(mock.patch.object(mamba_module, "selective_scan_fn", scan_without_kernels))
        for module in (triton_time, depthwise_conv_triton, directions_triton):
            patch(mock.patch.object(module, "launch", no_launch))
        for module in (depthwise_conv, directions):
            patch(mock.patch.object(module, "triton_runs_on", lambda device: True))
        yield
