"""Sentences for the synthetic corpus from Debian's text packages, split into train and dev.

    python scripts/synth/prepare_text.py ROOT --out DIR [--dev-fraction 0.01]

ROOT is a folder where ``fortunes``, ``fortunes-min``, ``dict-gcide`` and ``dict-jargon`` are
installed or unpacked (``/`` on a machine that has them; or ``dpkg -x PKG.deb ROOT`` for each).
Writes DIR/train.txt and DIR/dev.txt: one normalised sentence per paragraph (blank-line
separated, the form ``mamba_asr.data.synth.read_sentences`` reads). A sentence goes to dev when
the MD5 of its text falls under ``--dev-fraction``, so the split is the same on any machine and
no dev sentence is ever spoken in training. Prints the counts per source.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import tempfile
from pathlib import Path

from mamba_asr.data.synth import read_sentences

_ATTRIBUTION = re.compile(r"^\s*--\s*\S.*$|\s--\s?[A-Z][\w. ]*\.?\s*$", re.M)
_BRACKETS = re.compile(r"\[[^\]]*\]|\{|\}|\\[^\\]*\\")


def fortunes(root: Path) -> str:
    """Every fortune cookie (``%``-separated, attributions dropped) as blank-line paragraphs."""
    texts = []
    for path in sorted((root / "usr/share/games/fortunes").glob("*")):
        if path.suffix in (".dat", ".u8") or path.is_dir() or path.name == "ascii-art":
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        for cookie in raw.split("\n%\n"):
            texts.append(_ATTRIBUTION.sub("", cookie))
    return "\n\n".join(texts)


def _dict_blocks(root: Path, name: str) -> list[str]:
    """The blank-line separated blocks of a dictd database (``NAME.dict.dz``)."""
    with gzip.open(root / f"usr/share/dictd/{name}.dict.dz", "rt", errors="replace") as f:
        return re.split(r"\n\s*\n", f.read())


def gcide(root: Path) -> str:
    """Definitions and quotations of the GCIDE dictionary (sources, etymologies dropped)."""
    pieces = []
    for block in _dict_blocks(root, "gcide"):
        lines = [line for line in block.splitlines() if "Webster]" not in line]
        if not lines or not lines[0].startswith(" "):  # headword lines carry the etymology
            continue
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"^\d+\.\s*", "", text)
        pieces.append(re.sub(r"--\s*[A-Z][\w.' ]*\.?\s*$", "", _BRACKETS.sub("", text)))
    return "\n\n".join(pieces)


def jargon(root: Path) -> str:
    """The Jargon File's entries (pronunciations, part of speech and braces dropped)."""
    pieces = []
    for block in _dict_blocks(root, "jargon"):
        if block.startswith("    "):
            text = " ".join(line.strip() for line in block.splitlines())
            pieces.append(re.sub(r"^\d+\.\s*", "", _BRACKETS.sub("", text)))
    return "\n\n".join(pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dev-fraction", type=float, default=0.01)
    args = parser.parse_args()
    sentences: dict[str, None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extract in (("fortunes", fortunes), ("gcide", gcide), ("jargon", jargon)):
            path = Path(tmp) / f"{name}.txt"
            path.write_text(extract(args.root), encoding="utf-8")
            found = read_sentences([path])
            print(f"{name}: {len(found)} sentences")
            sentences.update(dict.fromkeys(found))
    dev, train = [], []
    for s in sentences:
        h = int(hashlib.md5(s.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (dev if h < args.dev_fraction else train).append(s)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("dev", dev)):
        (args.out / f"{name}.txt").write_text("".join(s + "\n\n" for s in items))
    print(f"total {len(sentences)}: train {len(train)}, dev {len(dev)}")


if __name__ == "__main__":
    main()
