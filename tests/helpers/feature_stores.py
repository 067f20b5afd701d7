"""Stores of teacher features in the extractor's format (features.npy, index.json), for the
feature distillation tests: random rows, since the mechanics need no real teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mamba_asr.data.manifest import read_manifest


def write_store(folder: Path, rows: dict[str, np.ndarray], frame_ms: int = 80) -> Path:
    """A store in the extractor's format: features.npy (float16) and index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    feats = np.concatenate(list(rows.values())).astype(np.float16)
    index, start = {}, 0
    for uid, r in rows.items():
        index[uid] = [start, len(r)]
        start += len(r)
    np.save(folder / "features.npy", feats)
    meta = {"teacher": "random", "frame_ms": frame_ms, "dim": feats.shape[1],
            "mean": feats.astype(np.float32).mean(0).tolist(),
            "std": feats.astype(np.float32).std(0).tolist(), "utterances": index}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(meta))
    return folder


def corpus_store(folder: Path, corpus: Path, frame_ms: int = 80, skip: int = 0) -> Path:
    """Random features for the tone corpus's utterances (all but the first ``skip``), each
    ``round(duration / frame_ms)`` rows, as the extractor makes them."""
    g = np.random.default_rng(2)
    utts = read_manifest(corpus)[skip:]
    rows = {u.id: g.normal(size=(max(1, round(u.duration * 1000 / frame_ms)), 6)) for u in utts}
    return write_store(folder, rows, frame_ms)
