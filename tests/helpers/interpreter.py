"""Triton's CPU interpreter for the kernel tests: the skip markers, and a test file's interpreted
run (triton reads TRITON_INTERPRET at import, so the file runs again in a subprocess and prints
its results as JSON on its last line)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (pip install 'mamba-asr[cuda]')"
)
needs_interpreter = pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) >= "2.3.0",
    reason="triton's CPU interpreter needs numpy < 2.3 (the [dev] extra pins it)",
)


def interpreted_json(script: str, *args: str, **env: str) -> Any:
    """The last line of ``python script *args``'s output, as JSON, run with TRITON_INTERPRET=1
    (and ``env``), with tests/ on its path; fails with the end of its stderr when it does not exit cleanly."""
    tests = str(Path(__file__).resolve().parents[1])  # so that the script imports helpers too
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path, **env}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
