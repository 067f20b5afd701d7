"""Data: manifests, the LibriSpeech reader, dynamic batching and the ASR dataset."""

from __future__ import annotations

from mamba_asr.data.batching import DynamicBatchSampler
from mamba_asr.data.dataset import AsrDataset, Batch, collate
from mamba_asr.data.librispeech import ScanResult, prepare_librispeech, scan_librispeech
from mamba_asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest

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
