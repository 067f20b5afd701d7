"""``python -m mamba_asr``: the same command as ``mamba-asr``."""

from __future__ import annotations

import sys

from mamba_asr.cli import main

if __name__ == "__main__":
    sys.exit(main())
