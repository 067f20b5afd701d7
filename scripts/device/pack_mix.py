"""Pack speech sets to travel to the GPU machine: each as .mix/NAME.tar, its audio 16 kHz Opus.

    python scripts/device/pack_mix.py NAME=MANIFEST [NAME=MANIFEST ...] [--compression 0.97]

Each set's audio is re-encoded to 16 kHz mono Ogg Opus (``--compression``: libsndfile's level,
0.97 about 15 kb/s, so two hours take about 14 MB; Opus files are copied as they are) beside a
manifest whose audio paths are relative: ``NAME/manifest.jsonl``. ``scripts/device/kd_compare.sh``
unpacks .mix/*.tar into /tmp/mix, where ``kd_compare.py``'s ``mix`` runs and ``EXTRA_DEV``
find them. Lossy on purpose (the call's files are limited to 64 MiB); a set measured there is
the coded audio, and so is the baseline measured beside it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from mamba_asr.audio.io import load_audio
from mamba_asr.data.manifest import read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "realspeech"))
from make_sets import write_opus  # noqa: E402  (scripts/realspeech is not a package)


def is_opus(path: Path) -> bool:
    info = sf.info(str(path))
    return info.format == "OGG" and info.subtype == "OPUS" and info.channels == 1


def pack_set(name: str, manifest: Path, dest: Path, compression: float) -> tuple[int, float]:
    utts = read_manifest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        packed = []
        for k, u in enumerate(tqdm(utts, desc=name, unit="utt")):
            out = folder / f"{k:06d}.ogg"
            folder.mkdir(exist_ok=True)
            if is_opus(u.audio):
                shutil.copyfile(u.audio, out)
            else:
                write_opus(out, load_audio(u.audio), compression)
            packed.append(replace(u, audio=out))
        write_manifest(folder / "manifest.jsonl", packed)  # audio paths relative to it
        with tarfile.open(dest, "w") as tar:
            tar.add(folder, arcname=name)
    return len(utts), sum(u.duration for u in utts) / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", metavar="NAME=MANIFEST")
    parser.add_argument("--compression", type=float, default=0.97)
    parser.add_argument("--out", type=Path, default=ROOT / ".mix")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    for item in args.sets:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"expected NAME=MANIFEST, got {item!r}")
        dest = args.out / f"{name}.tar"
        n, hours = pack_set(name, Path(path), dest, args.compression)
        print(f"{dest}: {n} utterances, {hours:.2f} h, {dest.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
