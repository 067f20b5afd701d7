"""Data: manifests, the LibriSpeech reader, dynamic batching and the ASR dataset.

The manifest reader and writer load with the package; the rest (the dataset and the sampler need
torch) loads on first use, so ``from mamba_asr.data import read_manifest`` works where torch is
not installed (the peers' benchmark, the teacher-feature script).
"""

from __future__ import annotations

import importlib
from typing import Any

from mamba_asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest

# name -> the module of this package that defines it, imported when the name is first used
_LAZY = {
    "AsrDataset": "dataset",
    "Batch": "dataset",
    "collate": "dataset",
    "DynamicBatchSampler": "batching",
    "ScanResult": "librispeech",
    "prepare_librispeech": "librispeech",
    "scan_librispeech": "librispeech",
}

__all__ = [
    "AsrDataset",
    "Batch",
    "DynamicBatchSampler",
    "ManifestError",
    "ScanResult",
    "Utterance",
    "collate",
    "prepare_librispeech",
    "read_manifest",
    "scan_librispeech",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
