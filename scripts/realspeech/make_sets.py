"""Test sets of real human speech that ships inside Debian packages, as JSONL manifests.

    python scripts/realspeech/make_sets.py OUT [--debs DIR]

Fetches the packages with ``apt-get download`` into DIR (default OUT/debs; packages already
there are used as they are), unpacks them and writes OUT/<set>/manifest.jsonl and
OUT/<set>/*.wav (16 kHz mono PCM16):

- ``librivox``: pocketsphinx-testdata's five LibriVox clips of *Sense and Sensibility*
  (one reader, 64 kb/s MP3 origin), with their transcription;
- ``cards``: pocketsphinx-testdata's five recordings of card names ("ten of clubs"), one
  speaker;
- ``goforward``: pocketsphinx-testdata's "go forward ten meters" (raw 16 kHz PCM);
- ``alsa``: alsa-utils' eight channel-test prompts ("Front Center", ...), one speaker, 48 kHz;
- ``all``: the four together.

Used only to measure (never to train or tune). They are small: 19 utterances, about a minute
and a half. The sets reserved for independent tests (asterisk prompts, the festival and flite
voices named in the README) are not made here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mamba_asr.audio.io import load_audio

PACKAGES = ("pocketsphinx-testdata", "alsa-utils")
PS = "usr/share/pocketsphinx/test/data"
ALSA = "usr/share/sounds/alsa"


def fetch(debs: Path) -> dict[str, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for pkg in PACKAGES:
        have = sorted(debs.glob(f"{pkg}_*.deb"))
        if not have:
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            have = sorted(debs.glob(f"{pkg}_*.deb"))
        found[pkg] = have[-1]
    return found


def write_set(out: Path, name: str, items: list[tuple[str, np.ndarray, str]]) -> int:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for uid, wave, text in items:
        path = folder / f"{uid}.wav"
        sf.write(path, wave, 16000, subtype="PCM_16")
        lines.append(json.dumps({"id": uid, "audio": path.name, "text": text.upper(),
                                 "duration": len(wave) / 16000}))  # fmt: skip
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return len(items)


def sphinx_transcripts(path: Path) -> dict[str, str]:
    """``<s> words </s> (id)`` lines -> {id: words}."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m:
            out[m.group(2)] = " ".join(m.group(1).split())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--debs", type=Path, default=None)
    args = parser.parse_args()
    debs = fetch(args.debs or args.out / "debs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for deb in debs.values():
            subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        ps = root / PS
        sets = {}
        texts = sphinx_transcripts(ps / "librivox/transcription")
        sets["librivox"] = [
            (uid, load_audio(ps / f"librivox/{uid}.wav"), t) for uid, t in sorted(texts.items())
        ]
        texts = sphinx_transcripts(ps / "cards/cards.transcription")
        sets["cards"] = [
            (f"cards-{uid}", load_audio(ps / f"cards/{uid}.wav"), t)
            for uid, t in sorted(texts.items())
        ]
        raw = np.fromfile(ps / "goforward.raw", dtype="<i2").astype(np.float32) / 32768
        sets["goforward"] = [("goforward", raw, "go forward ten meters")]
        sets["alsa"] = [
            (f"alsa-{p.stem}", load_audio(p), p.stem.replace("_", " "))
            for p in sorted((root / ALSA).glob("*.wav")) if p.stem != "Noise"
        ]  # fmt: skip
        every = []
        for name, items in sets.items():
            n = write_set(args.out, name, items)
            secs = sum(len(w) for _, w, _ in items) / 16000
            print(f"{name}: {n} utterances, {secs:.1f} s")
            for line in (args.out / name / "manifest.jsonl").read_text().splitlines():
                record = json.loads(line)
                every.append(json.dumps({**record, "audio": f"../{name}/{record['audio']}"}))
        (args.out / "all").mkdir(exist_ok=True)
        (args.out / "all" / "manifest.jsonl").write_text("\n".join(every) + "\n")
        print(f"all: {len(every)} utterances")


if __name__ == "__main__":
    main()
