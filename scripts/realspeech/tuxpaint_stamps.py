"""Real human speech for training: Tux Paint's spoken stamp descriptions in other languages, as a
JSONL manifest.

    python scripts/realspeech/tuxpaint_stamps.py OUT [--debs DIR] [--langs fr ru ...]

Fetches ``tuxpaint-stamps-default`` (GPL-2) with ``apt-get download`` into DIR (default OUT/debs;
a package already there is used as it is) and writes OUT/manifest.jsonl and OUT/<lang>/<id>.ogg
(16 kHz mono Opus). Each stamp ``NAME.png`` has its description in ``NAME.txt`` (the English
first, then ``LANG.utf8=...`` lines) and recordings of it ``NAME_desc_LANG.ogg``; a recording is
paired with its language's line. About 7400 clips, 3 hours, in French, Russian, Romanian,
Catalan, Bulgarian, Spanish, Belarusian, Greek, Danish and a few more; a handful of readers.

The text is romanized into the English model's letters with ``anyascii`` (Cyrillic and Greek
transliterated, diacritics dropped: ``Белый медведь`` -> ``BELYY MEDVED``), punctuation dropped.
Left out: lines with digits (their words are not spelled here), the English recordings
(``NAME_desc.ogg``: said as the bare name, not the text; kept apart for measuring), and clips
whose speaking rate is implausible for their text (fewer than ``--min-cps`` or more than
``--max-cps`` letters a second: a line changed since it was recorded, or a bare name). Like the
Czech voice acting (``fillets_cs.py``), it teaches an encoder what people sound like; it is not
English and is never used to measure English recognition.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from mamba_asr.audio.io import load_audio
from mamba_asr.data.manifest import Utterance, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sets import ascii_words, fetch, write_opus  # noqa: E402  (scripts/realspeech is not a package)

PACKAGE = "tuxpaint-stamps-default"
STAMPS = "usr/share/tuxpaint/stamps"
LANGS = ("fr", "ru", "ro", "ca", "bg", "es", "be", "el", "da", "lt", "nl")
CLIP = re.compile(r"^(?P<stem>.+)_desc_(?P<lang>[a-z]{2,3}(?:_[A-Z]{2})?)\.ogg$")


def romanize(text: str) -> str:
    """Any script in A-Z and apostrophes, uppercase, words split on everything else; ``""`` for
    text with digits."""
    from anyascii import anyascii

    return ascii_words(text, anyascii)


def descriptions(txt: str) -> dict[str, str]:
    """{language: description} of a stamp's ``.txt`` (``LANG.utf8=text`` lines; the first line,
    the English, is not one of them)."""
    out = {}
    for line in txt.splitlines():
        lang, sep, text = line.partition(".utf8=")
        if sep and lang and " " not in lang:
            out[lang] = text.strip()
    return out


def letter_rate(text: str, seconds: float) -> float:
    return sum(c.isalpha() for c in text) / max(seconds, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--debs", type=Path, default=None)
    parser.add_argument("--langs", nargs="+", default=list(LANGS))
    parser.add_argument("--min-cps", type=float, default=5.0)
    parser.add_argument("--max-cps", type=float, default=25.0)
    parser.add_argument("--compression", type=float, default=0.96,
                        help="Opus compression level, 0 (best) to 1 (smallest)")  # fmt: skip
    args = parser.parse_args()
    deb = fetch(args.debs or args.out / "debs", (PACKAGE,))[PACKAGE]
    records, skipped = [], {"no text": 0, "digits": 0, "rate": 0}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        root = Path(tmp) / STAMPS
        clips = []
        for path in sorted(root.rglob("*_desc_*.ogg")):
            m = CLIP.match(path.name)
            if m and m["lang"] in args.langs:
                clips.append((path, m["stem"], m["lang"]))
        texts: dict[Path, dict[str, str]] = {}
        for path, stem, lang in tqdm(clips, desc="tuxpaint stamps", unit="clip"):
            txt = path.with_name(f"{stem}.txt")
            if txt not in texts:
                texts[txt] = descriptions(txt.read_text("utf-8", "replace")) if txt.exists() else {}
            line = texts[txt].get(lang, "")
            text = romanize(line)
            if not text:
                skipped["digits" if line else "no text"] += 1
                continue
            wave = load_audio(path)
            seconds = len(wave) / 16000
            if not args.min_cps <= letter_rate(text, seconds) <= args.max_cps:
                skipped["rate"] += 1
                continue
            rel = path.relative_to(root).parent
            uid = "tux-" + lang + "-" + "-".join((*rel.parts, stem))
            dest = args.out / lang / f"{uid}.ogg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_opus(dest, wave, args.compression)
            records.append(Utterance(uid, dest, text, seconds))
    write_manifest(args.out / "manifest.jsonl", records)  # audio paths relative to OUT
    hours = sum(u.duration for u in records) / 3600
    by_lang: dict[str, int] = {}
    for u in records:
        lang = u.id.split("-")[1]
        by_lang[lang] = by_lang.get(lang, 0) + 1
    print(f"{args.out / 'manifest.jsonl'}: {len(records)} clips, {hours:.2f} h; left out: "
          + ", ".join(f"{n} {why}" for why, n in skipped.items()))  # fmt: skip
    print("by language: " + ", ".join(f"{k} {v}" for k, v in sorted(by_lang.items())))


if __name__ == "__main__":
    main()
