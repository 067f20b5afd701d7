"""A tiny synthetic corpus for training tests: tones per character (440 Hz for "A", 880 Hz for
"B", silence for a space), written as WAV files with a JSONL manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
TEXTS = ["AB", "BA", "A B", "B", "AA", "BB A", "A", "AB B", "BAB", "B A", "ABA", "BA B"]
TONES = {"A": 440.0, "B": 880.0, " ": 0.0}


def tone_utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """0.2 s of a tone per character, 0.1 s of silence around, a little noise."""
    t = np.arange(int(0.2 * SAMPLE_RATE)) / SAMPLE_RATE
    parts = [0.3 * np.sin(2 * np.pi * TONES[c] * t) for c in text]
    wave = np.concatenate([np.zeros(1600), *parts, np.zeros(1600)])
    return (wave + 0.01 * rng.standard_normal(wave.shape)).astype(np.float32)


def write_corpus(folder: Path, texts: list[str] = TEXTS) -> Path:
    """WAV files and ``manifest.jsonl`` for ``texts`` in ``folder``; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(texts):
        wave = tone_utterance(text, rng)
        sf.write(folder / f"utt{i:02d}.wav", wave, SAMPLE_RATE)
        lines.append({"id": f"u{i}", "audio": f"utt{i:02d}.wav", "text": text,
                      "duration": len(wave) / SAMPLE_RATE})  # fmt: skip
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest
