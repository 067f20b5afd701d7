"""MAMBA_ASR_TRITON_SCAN_CONFIG='{"block_d": 16, ...}' runs the tests of this folder with other launch
settings of the Triton selective scan (its CONFIG), e.g. to check a setting a benchmark picked."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(autouse=True)
def _triton_scan_config():
    spec = os.environ.get("MAMBA_ASR_TRITON_SCAN_CONFIG")
    if not spec:
        yield
        return
    from mamba_asr.ops.selective_scan import triton_kernel

    saved = dict(triton_kernel.CONFIG)
    triton_kernel.CONFIG.update(json.loads(spec))
    yield
    triton_kernel.CONFIG.clear()
    triton_kernel.CONFIG.update(saved)
