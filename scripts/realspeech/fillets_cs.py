"""Real human speech for training: Fish Fillets NG's Czech voice acting, as a JSONL manifest.

    python scripts/realspeech/fillets_cs.py OUT [--debs DIR] [--compression 0.96]

Fetches ``fillets-ng-data`` (the levels' dialogue scripts) and ``fillets-ng-data-cs`` (the
Czech recordings) with ``apt-get download`` into DIR (default OUT/debs; packages already there
are used as they are) and writes OUT/manifest.jsonl and OUT/<level>/<dialog id>.ogg (16 kHz
mono Opus, small enough to travel). Each recording ``sound/<level>/cs/<id>.ogg`` is paired with
the Czech line that ``script/<level>/dialogs_cs.lua`` gives its id (``dialogId(id, font,
english)`` then ``dialogStr(czech)``).

About 100 minutes, 1782 lines said by about 20 voice actors (the two fish say most of them);
GPL-2 (ALTAR interactive, the Fish Fillets NG authors). The text is Czech written in the
English model's letters: diacritics stripped (``Už mě z té hlavy bolí hlava`` ->
``UZ ME Z TE HLAVY BOLI HLAVA``), punctuation dropped; lines with digits or without a Czech
text are left out. It teaches an encoder what people sound like; it is not English and is
never used to measure English recognition.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

from tqdm import tqdm

from mamba_asr.audio.io import load_audio
from mamba_asr.data.manifest import Utterance, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sets import ascii_words, fetch, write_opus  # noqa: E402  (scripts/realspeech is not a package)

PACKAGES = ("fillets-ng-data", "fillets-ng-data-cs")
GAME = "usr/share/games/fillets-ng"
LINE = re.compile(r'dialogId\("([^"]+)"[^\n]*\)\s*\n\s*dialogStr\("((?:[^"\\]|\\.)*)"\)')


def _strip_diacritics(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text)
    return "".join(c for c in plain if not unicodedata.combining(c))


def ascii_czech(text: str) -> str:
    """Czech in A-Z: diacritics stripped, apostrophes kept, other marks to spaces; ``""`` for
    text with digits (a number's Czech words are not spelled here)."""
    return ascii_words(text, _strip_diacritics)


def czech_lines(lua: str) -> dict[str, str]:
    """{dialog id: Czech line} of a ``dialogs_cs.lua``."""
    return {m.group(1): m.group(2) for m in LINE.finditer(lua)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--debs", type=Path, default=None)
    parser.add_argument(
        "--compression",
        type=float,
        default=0.96,
        help="Opus compression level, 0 (best) to 1 (smallest); 0.96: about 17 kb/s",
    )
    args = parser.parse_args()
    debs = fetch(args.debs or args.out / "debs", PACKAGES).values()
    records, skipped = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        game = Path(tmp) / GAME
        sounds = sorted(game.glob("sound/*/cs/*.ogg"))
        texts: dict[tuple[str, str], str] = {}
        for lua in game.glob("script/*/dialogs_cs.lua"):
            level = lua.parent.name
            for uid, line in czech_lines(lua.read_text(encoding="utf-8")).items():
                texts[level, uid] = line
        for path in tqdm(sounds, desc="fillets cs", unit="line"):
            level = path.parent.parent.name
            text = ascii_czech(texts.get((level, path.stem), ""))
            if not text:
                skipped += 1
                continue
            wave = load_audio(path)
            dest = args.out / level / f"{path.stem}.ogg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_opus(dest, wave, args.compression)
            records.append(Utterance(f"cs-{level}-{path.stem}", dest, text, len(wave) / 16000))
    write_manifest(args.out / "manifest.jsonl", records)  # audio paths relative to OUT
    hours = sum(u.duration for u in records) / 3600
    print(
        f"{args.out / 'manifest.jsonl'}: {len(records)} lines, {hours:.2f} h; "
        f"{skipped} recordings without a usable Czech line left out"
    )


if __name__ == "__main__":
    main()
