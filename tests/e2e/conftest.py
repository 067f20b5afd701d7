"""A tiny spoken corpus for the end-to-end tests: sentences spoken by espeak-ng, as WAV + JSONL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "A DOG RAN IN THE PARK",
    "SHE READS A GOOD BOOK",
    "WE LIKE GREEN APPLES",
    "THE SUN IS VERY HOT",
    "MY FRIEND PLAYS MUSIC",
    "OPEN THE BIG DOOR",
    "BIRDS FLY OVER THE SEA",
    "HE DRINKS COLD WATER",
    "THEY WALK TO SCHOOL",
    "IT IS A RAINY DAY",
    "YOU CAN'T STOP NOW",
]


def synthesize(folder: Path, sentences: list[str] = SENTENCES, voice: str = "en-us") -> Path:
    """Speak each sentence with espeak-ng (22.05 kHz WAV); returns the JSONL manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(sentences):
        wav = folder / f"s{i:02d}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-w", str(wav), text.lower()],
            check=True,
            capture_output=True,
        )
        info = sf.info(str(wav))
        lines.append(
            {"id": f"s{i:02d}", "audio": wav.name, "text": text, "duration": info.duration}
        )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The spoken sentences' manifest (12 utterances, about 17 s of audio)."""
    return synthesize(tmp_path_factory.mktemp("speech"))
