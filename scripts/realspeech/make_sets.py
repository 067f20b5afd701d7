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
- ``letters``: klettres-data's spoken English alphabet, 52 letter names ("B"), two speakers
  (``en``: Robert Wadley, US, credited in the KLettres handbook; ``en_GB``: uncredited, British),
  44.1 kHz Ogg Vorbis; text from the package's ``sounds.xml``; GPL-2+;
- ``words``: klettres-data's 39 one-word "syllables" of the same two speakers ("CAR", "SKY";
  the three that are bare sounds, AW, CH and TH, are left out); GPL-2+;
- ``warzone``: warzone2100-data's 34 tutorial lines (``audio/tutorial/tut*.ogg`` in base.wz),
  one narrator of the original 1999 game, 11 kHz Ogg Vorbis; text: the on-screen message that
  ``script/tutorial.js`` pairs with each line, not checked by ear. Left out: lines without a
  message, the one with "unit(s)", and seven whose message is too long for the clip (over 4.5
  words a second: the message there is a paraphrase); GPL-2+ (Eidos 1999-2004, Warzone 2100
  Project);
- ``objects``: ktuberling-data's English names of the stamps (``sounds/en``: "ball", "camel",
  "pineapple", ...), 69 words said alone by an uncredited speaker, 44.1 kHz Ogg Vorbis; text: the
  sound's name in ``en.soundtheme`` without its scene prefix, two misspelt names corrected
  (brocolli, sphynx) and two compounds split (palm tree, falling star), each as Moonshine base
  heard it; left out: ufo and moonwalker, whose spoken form is not certain; GPL-2+;
- ``all``: the eight together.

Used only to measure (never to train or tune). They are small: 213 utterances, about 6.3
minutes, at least 8 speakers. The first four (19 utterances, 48.6 s) were the whole of ``all``
before the others came; ``all`` was the first seven (144 utterances) before ``objects``.
Transcripts of the letters, words and warzone sets go through ``normalize_transcript`` (numbers
spelled). The sets reserved for independent tests (asterisk prompts, the festival and flite
voices named in the README) are not made here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from mamba_asr.audio.io import load_audio
from mamba_asr.text import normalize_transcript

PACKAGES = ("pocketsphinx-testdata", "alsa-utils", "klettres-data", "warzone2100-data",
            "ktuberling-data")  # fmt: skip
PS = "usr/share/pocketsphinx/test/data"
ALSA = "usr/share/sounds/alsa"
KLETTRES = "usr/share/klettres"
KLETTRES_VOICES = ("en", "en_GB")
NOT_WORDS = {"AW", "CH", "TH"}  # klettres "syllables" that are bare sounds, not words
WARZONE = "usr/share/games/warzone2100/base.wz"
MAX_WORDS_PER_SECOND = 4.5  # a tutorial message longer than this for its clip is not what is said
KTUBERLING = "usr/share/ktuberling/sounds"
OBJECT_WORDS = {"brocolli": "broccoli", "sphynx": "sphinx", "palmtree": "palm tree",
                "fallingstar": "falling star"}  # fmt: skip
OBJECTS_LEFT_OUT = {"ufo", "moonwalker"}  # how they are said (spelled out? one word?) unknown
TUTORIAL_LINE = re.compile(r'"audio":\s*"(tut\d+\.ogg)"[^}]*?"message":\s*_\("([^"]+)"\)')

Items = list[tuple[str, np.ndarray, str]]


def write_opus(path: Path, wave: np.ndarray, compression: float) -> None:
    """A 16 kHz mono waveform as Ogg Opus (small enough to travel; ``compression``: soundfile's
    level, 0 best to 1 smallest)."""
    sf.write(path, wave, 16000, format="OGG", subtype="OPUS", compression_level=compression)


def ascii_words(text: str, transliterate: Callable[[str], str]) -> str:
    """Text of another language in A-Z and apostrophes: ``transliterate`` (applied after typographic
    apostrophes become ') brings it to Latin letters, then uppercase, every other mark a space,
    apostrophes at a word's edge dropped; ``""`` for text with digits (a number's words are not
    spelled here)."""
    if any(c.isdigit() for c in text):
        return ""
    plain = re.sub(r"[^A-Z' ]+", " ", transliterate(text.replace("’", "'")).upper())
    return " ".join(w.strip("'") for w in plain.split() if w.strip("'"))


def fetch(debs: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """{package: its .deb in ``debs``}, fetched with ``apt-get download`` where missing."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for pkg in packages:
        have = sorted(debs.glob(f"{pkg}_*.deb"))
        if not have:
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            have = sorted(debs.glob(f"{pkg}_*.deb"))
        found[pkg] = have[-1]
    return found


def write_set(out: Path, name: str, items: Items) -> int:
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


def klettres(root: Path, kind: str) -> Items:
    """klettres-data's ``alphabet`` (kind "alpha") or ``syllables`` (kind "syllab") of both
    English voices, named by each voice's ``sounds.xml``."""
    items = []
    for voice in KLETTRES_VOICES:
        tree = ET.parse(root / KLETTRES / voice / "sounds.xml")
        for sound in tree.iter("sound"):
            name, file = sound.get("name"), sound.get("file")
            if f"/{kind}/" not in file or name.upper() in NOT_WORDS:
                continue
            uid = f"klettres-{voice}-{kind}-{name.lower()}"
            items.append((uid, load_audio(root / KLETTRES / file), normalize_transcript(name)))
    return items


def warzone(root: Path, tmp: Path) -> Items:
    """Warzone 2100's tutorial lines that ``script/tutorial.js`` shows a plain message for,
    that message not longer than the clip allows."""
    items = []
    with zipfile.ZipFile(root / WARZONE) as wz:
        script = wz.read("script/tutorial.js").decode()
        for file, message in TUTORIAL_LINE.findall(script):
            if "(" in message:  # "the new unit(s)": which one is spoken is not known
                continue
            path = tmp / file
            path.write_bytes(wz.read(f"audio/tutorial/{file}"))
            wave, text = load_audio(path), normalize_transcript(message)
            if len(text.split()) > MAX_WORDS_PER_SECOND * len(wave) / 16000:
                continue
            items.append((f"warzone-{Path(file).stem}", wave, text))
    return items


def objects(root: Path) -> Items:
    """ktuberling-data's English stamp names (``en.soundtheme``), one word or two each."""
    items = []
    for sound in ET.parse(root / KTUBERLING / "en.soundtheme").iter("sound"):
        name, file = sound.get("name"), sound.get("file")
        word = name.rsplit("_", 1)[-1]  # "egypt_camel" -> "camel"
        if word in OBJECTS_LEFT_OUT:
            continue
        text = OBJECT_WORDS.get(word, word)
        items.append((f"objects-{name}", load_audio(root / KTUBERLING / file), text))
    return items


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
        sets["letters"] = klettres(root, "alpha")
        sets["words"] = klettres(root, "syllab")
        sets["warzone"] = warzone(root, root)
        sets["objects"] = objects(root)
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
