"""LibriSpeech reader: a split's ``SPEAKER/CHAPTER/*.flac`` and transcripts to manifests.

Layout of a split folder (``train-clean-100``, ``dev-clean``, ...)::

    SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt    lines "SPEAKER-CHAPTER-UTT TRANSCRIPT"
    SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac

Transcripts are kept as LibriSpeech writes them (already upper case, apostrophes). Durations
come from the FLAC headers (``audio_info``), read by a few threads; with ``decode`` every file
is decoded in full (``check_audio``), so a file corrupt inside (a flipped bit) is found too.
``prepare_librispeech`` decodes: a manifest it writes holds only audio that loads.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mamba_asr.audio.io import AudioError, AudioInfo, audio_info, check_audio
from mamba_asr.data.manifest import Utterance, write_manifest
from mamba_asr.files import check_output, read_text

__all__ = ["ScanResult", "find_splits", "prepare_librispeech", "scan_librispeech"]

log = logging.getLogger(__name__)

TRANSCRIPTS = "*/*/*.trans.txt"
_CHUNK = 512  # utterances probed per batch of thread-pool jobs


@dataclass
class ScanResult:
    """Utterances found (in speaker/chapter/utterance order) and what was skipped.

    ``problems`` holds one line per skipped utterance (a bad audio file or transcript line).
    """

    utterances: list[Utterance]
    problems: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.problems)


def scan_librispeech(
    root: str | os.PathLike[str],
    skip_bad: bool = False,
    progress: bool = True,
    num_threads: int = 8,
    decode: bool = False,
) -> ScanResult:
    """Utterances of one LibriSpeech split folder ``root`` (see the module docstring).

    A missing, empty or unreadable FLAC (with ``decode``: one that does not decode in full)
    raises ``AudioError`` naming the file, and a transcript line without text raises
    ``ValueError`` naming the file and line, unless ``skip_bad``: then the utterance is
    skipped, logged (one WARNING line naming the file and the problem) and counted.
    """
    root = Path(root)
    transcripts = sorted(root.glob(TRANSCRIPTS))
    if not transcripts:
        raise ValueError(f"{root}: no LibriSpeech transcripts ({TRANSCRIPTS}) in this folder")
    result = ScanResult(utterances=[])
    entries = list(_read_transcripts(transcripts, skip_bad, result.problems))
    probe = functools.partial(_probe, info=check_audio if decode else audio_info)
    bar = tqdm(total=len(entries), desc=root.name, unit="utt", disable=not progress)
    with bar, ThreadPoolExecutor(max(1, num_threads)) as pool:
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start : start + _CHUNK]
            for probed in pool.map(probe, chunk):
                if isinstance(probed, AudioError):
                    if not skip_bad:
                        raise probed
                    log.warning("skipped: %s", probed)
                    result.problems.append(str(probed))
                else:
                    result.utterances.append(probed)
            bar.update(len(chunk))
    return result


def find_splits(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(name, folder) of each split under ``root``: ``[("all", root)]`` when root is a split.

    Otherwise every sub-folder holding transcripts (``dev-clean``, ``train-clean-100``, ...),
    sorted by name; a ``LibriSpeech`` folder (the archives' top folder) is looked into.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    if next(root.glob(TRANSCRIPTS), None) is not None:
        return [("all", root)]
    splits = [
        (d.name, d)
        for d in sorted(root.iterdir())
        if d.is_dir() and next(d.glob(TRANSCRIPTS), None) is not None
    ]
    if not splits and (root / "LibriSpeech").is_dir():
        return find_splits(root / "LibriSpeech")
    if not splits:
        raise ValueError(
            f"{root}: no LibriSpeech split found (expected SPLIT/{TRANSCRIPTS} or {TRANSCRIPTS})"
        )
    return splits


def prepare_librispeech(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``OUT_DIR/<split>.jsonl`` for each split under ``root`` (``all.jsonl`` when root
    is itself a split); returns the manifests' paths. Every audio file is decoded in full; a
    bad one stops it (``AudioError``) or, with ``skip_bad``, is left out of the manifest and
    logged: one WARNING line per file, then one per split with the count.

    Every manifest's path is checked before any audio is read: one that exists already raises
    ``FileExistsError`` unless ``overwrite`` (``mamba_asr.files.check_output``). Manifests are
    written once every split is read, so an error leaves none behind.
    """
    splits = find_splits(root)
    paths = {name: Path(out_dir) / f"{name}.jsonl" for name, _ in splits}
    for path in paths.values():
        check_output(path, "manifest", overwrite=overwrite)
    scans = {}
    for name, folder in splits:
        scans[name] = scan_librispeech(folder, skip_bad=skip_bad, progress=progress, decode=True)
        if scans[name].skipped:
            log.warning("%s: skipped %d bad utterances (above)", name, scans[name].skipped)
    for name, scan in scans.items():
        write_manifest(paths[name], scan.utterances)
        log.info("%s: %d utterances -> %s", name, len(scan.utterances), paths[name])
    return list(paths.values())


def _read_transcripts(
    transcripts: list[Path], skip_bad: bool, problems: list[str]
) -> Iterator[tuple[str, Path, str]]:
    """(utterance id, flac path, text) of every transcript line, in file order."""
    for trans in transcripts:
        for number, line in enumerate(read_text(trans).splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                problem = f"{trans}:{number}: expected 'UTTERANCE-ID TRANSCRIPT', got {line!r}"
                if not skip_bad:
                    raise ValueError(problem)
                log.warning("skipped: %s", problem)
                problems.append(problem)
                continue
            yield utt_id, trans.parent / f"{utt_id}.flac", " ".join(text.split())


def _probe(
    entry: tuple[str, Path, str], info: Callable[[Path], AudioInfo]
) -> Utterance | AudioError:
    """An Utterance with the file's duration (from ``info``), or the AudioError saying why not."""
    utt_id, audio, text = entry
    try:
        duration = info(audio).duration
    except AudioError as exc:
        return exc
    return Utterance(id=utt_id, audio=audio.absolute(), text=text, duration=duration)
