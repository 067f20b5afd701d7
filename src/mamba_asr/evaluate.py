"""Evaluate a model on a test set: WER, CER, real-time factor, and every hypothesis beside its
reference.

A test set is a JSONL manifest or a LibriSpeech-layout folder (SPEAKER/CHAPTER/*.flac with
*.trans.txt). Utterances are decoded in batches sorted by duration; the real-time factor is decoding
time (feature extraction, model and search, audio loading excluded) over the seconds of audio
decoded (the samples read, not the durations the manifest declares).

How an utterance is decoded:

- offline (``chunk_ms=None``), a PyTorch model: the batch at once (``ASR.transcribe_batch``),
  each utterance as one segment;
- offline, an ONNX export (``mamba_asr.runtime.onnx.OnnxASR``): each utterance as one stream
  with the endpoint rule off, so also one segment, the same search as PyTorch's;
- streaming (``chunk_ms``, a model that streams): each utterance as
  ``mamba-asr transcribe --stream`` decodes a file, ``chunk_ms`` of audio per step with the
  endpoint rule, in PyTorch (``transcription.transcribe_waveform``) or onnxruntime.

Bad audio (missing, corrupt, ... : ``AudioError``) is skipped with one WARNING line naming the
file and counted, or with ``strict`` stops the evaluation; either way the hypotheses decoded
before it are written. A reference that normalises to nothing (only punctuation) has no words
to count errors against: its utterance is decoded and written but not scored, and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mamba_asr.asr import ASR, eval_mode
from mamba_asr.atomic import atomic_write_text
from mamba_asr.audio import load_audio
from mamba_asr.audio.io import AudioError
from mamba_asr.data import (
    DynamicBatchSampler,
    ScanResult,
    Utterance,
    read_manifest,
    scan_librispeech,
)
from mamba_asr.decode import DecodingOptions
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.runtime.onnx import OnnxASR
from mamba_asr.text import error_rates, normalize_transcript

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Corpus error rates (fractions), counts and speed of one evaluation.

    ``utterances`` were decoded (``audio_seconds`` of them); ``skipped`` had bad audio;
    ``unscored`` were decoded but have an empty reference, so the rates leave them out.
    """

    wer: float
    cer: float
    utterances: int
    audio_seconds: float
    decode_seconds: float
    rtf: float
    skipped: int = 0
    unscored: int = 0


def hypotheses_name(test_set: str | Path, *tags: str) -> str:
    """``hyps-<folder>-<name>-<hash>[-<tag>...].jsonl``: the test set's folder and file name
    (without ``.jsonl``), 8 hex digits of the SHA-1 of its absolute path (links resolved) and
    ``tags`` (how it was decoded: ``stream``, ``int8``).

    ``data/dev/all.jsonl`` gives ``hyps-dev-all-<hash>.jsonl`` and ``data/test/all.jsonl``
    ``hyps-test-all-<hash>.jsonl``; the same set always gets the same name, two sets never do.
    """
    path = Path(test_set).resolve()
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:8]
    name = path.name.removesuffix(".jsonl")
    return "-".join(p for p in ("hyps", path.parent.name, name, digest, *tags) if p) + ".jsonl"


def read_test_set(path: str | Path, skip_bad: bool = False) -> ScanResult:
    """Utterances of a JSONL manifest (a file) or a LibriSpeech-layout folder, and the
    problems of what a folder scan skipped (``skip_bad``; see ``scan_librispeech``)."""
    path = Path(path)
    if path.is_dir():
        return scan_librispeech(path, skip_bad=skip_bad, progress=False)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest or folder")
    return ScanResult(read_manifest(path))


def load_test_set(path: str | Path) -> list[Utterance]:
    """Utterances of a JSONL manifest (a file) or a LibriSpeech-layout folder."""
    return read_test_set(path).utterances


def _batches(utterances: Sequence[Utterance], batch_seconds: float) -> list[list[int]]:
    sampler = DynamicBatchSampler(
        [u.duration for u in utterances], batch_seconds, num_buckets=1, shuffle=False
    )
    return list(sampler)


def _pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves])
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lengths


@dataclass
class _Decoded:
    """What the decoding loop has so far: hypotheses and samples by utterance index."""

    hyps: dict[int, str]
    samples: dict[int, int]
    skipped: int = 0
    seconds: float = 0.0


def evaluate(
    asr: ASR | OnnxASR,
    utterances: Sequence[Utterance],
    hypotheses_path: str | Path | None = None,
    options: DecodingOptions | None = None,
    batch_seconds: float = 60.0,
    progress: bool = False,
    strict: bool = False,
    chunk_ms: float | None = None,
) -> EvalResult:
    """Decode ``utterances`` with ``asr`` (a bundle, or an ONNX export on onnxruntime) and
    score them against their texts.

    References and hypotheses are compared after ``normalize_transcript`` (LibriSpeech style).
    ``hypotheses_path``: a JSONL file, one {"id", "ref", "hyp", "duration"} per decoded
    utterance, in test-set order. ``chunk_ms``: decode each utterance as a stream in steps of
    this much audio (see the module docstring; a model that does not stream is a ValueError).
    Bad audio: see the module docstring. ValueError when no utterance can be scored (none
    decoded, or every reference empty).
    """
    if not utterances:
        raise ValueError("the test set has no utterances")
    refs = [normalize_transcript(u.text) for u in utterances]
    if not any(refs):
        raise ValueError(f"none of the {len(refs)} references has words after normalisation")
    decode = _decoder(asr, asr.resolve_options(options), chunk_ms)
    done = _Decoded({}, {})
    try:
        _decode_all(asr, utterances, decode, batch_seconds, progress, strict, done)
    except AudioError as exc:  # strict: keep what was decoded, and say where
        kept = _write_hypotheses(hypotheses_path, utterances, refs, done)
        raise AudioError(exc.path, exc.problem + kept) from None
    except BaseException:
        if _write_hypotheses(hypotheses_path, utterances, refs, done):
            log.warning("%d hypotheses decoded so far are in %s", len(done.hyps), hypotheses_path)
        raise
    _write_hypotheses(hypotheses_path, utterances, refs, done)
    return _score(utterances, refs, done, asr.sample_rate)


Decoder = Callable[[list[np.ndarray]], list[str]]


def _decoder(asr: ASR | OnnxASR, options: DecodingOptions, chunk_ms: float | None) -> Decoder:
    """Waveforms at the model's rate -> their texts, as the module docstring says; a model
    that does not stream, or a chunk too short for it, is a ValueError here, before any work."""
    if isinstance(asr, OnnxASR):
        endpoint = EndpointConfig(enabled=chunk_ms is not None)
        if chunk_ms is not None:
            asr.create_stream(options, chunk_ms)  # a chunk too short: one line

        def onnx(waves: list[np.ndarray]) -> list[str]:
            return [
                asr.transcribe_waveform(
                    w, options=options, chunk_ms=chunk_ms, endpoint=endpoint
                ).text
                for w in waves
            ]

        return onnx
    if chunk_ms is not None:
        asr.create_stream(options, chunk_ms)  # a model that does not stream: one line

        def stream(waves: list[np.ndarray]) -> list[str]:
            streams = [asr.create_stream(options, chunk_ms) for _ in waves]
            for s, w in zip(streams, waves, strict=True):
                s.accept_waveform(asr.sample_rate, w)
            with eval_mode(asr):
                asr.decode_streams(streams)  # whole chunks, the streams in one batch
                return [s.finish().text for s in streams]  # each one's last chunk

        return stream
    device = next(asr.parameters()).device

    def batch(waves: list[np.ndarray]) -> list[str]:
        padded, lengths = _pad([torch.from_numpy(w) for w in waves])
        return asr.transcribe_batch(padded.to(device), lengths.to(device), options)

    return batch


def _decode_all(
    asr: ASR | OnnxASR,
    utterances: Sequence[Utterance],
    decode: Decoder,
    batch_seconds: float,
    progress: bool,
    strict: bool,
    done: _Decoded,
) -> None:
    """Decode batch by batch into ``done``; bad audio is skipped (``strict``: raised)."""
    device = None if isinstance(asr, OnnxASR) else next(asr.parameters()).device
    cuda = device is not None and device.type == "cuda"
    batches = _batches(utterances, batch_seconds)
    for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress):
        waves, kept = [], []
        for i in batch:
            try:
                waves.append(load_audio(utterances[i].audio, asr.sample_rate))
            except AudioError as exc:
                if strict:
                    raise
                log.warning("skipped: %s", exc)
                done.skipped += 1
                continue
            kept.append(i)
        if not kept:
            continue
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        texts = decode(waves)
        if cuda:
            torch.cuda.synchronize(device)
        done.seconds += time.perf_counter() - start
        done.hyps.update(zip(kept, texts, strict=True))
        done.samples.update(zip(kept, (w.shape[0] for w in waves), strict=True))


def _write_hypotheses(
    path: str | Path | None, utterances: Sequence[Utterance], refs: list[str], done: _Decoded
) -> str:
    """Write the decoded utterances' lines to ``path``; returns "; the N hypotheses decoded
    before it are in PATH" (for an error message) or "" when nothing was written."""
    if path is None or not done.hyps:
        return ""
    lines = [
        json.dumps(
            {
                "id": u.id,
                "ref": r,
                "hyp": normalize_transcript(done.hyps[i]),
                "duration": u.duration,
            }
        )  # fmt: skip
        for i, (u, r) in enumerate(zip(utterances, refs, strict=True))
        if i in done.hyps
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return f"; the {len(lines)} hypotheses decoded before it are in {path}"


def _score(
    utterances: Sequence[Utterance], refs: list[str], done: _Decoded, sample_rate: int
) -> EvalResult:
    # An empty reference (only punctuation before normalisation) gives jiwer no words to count
    # errors against: such utterances are decoded and written but left out of the rates and
    # counted in ``unscored``, so a set of them is reported, never scored as "nan%".
    decoded = sorted(done.hyps)
    scored = [i for i in decoded if refs[i]]
    if not scored:
        raise ValueError(
            f"no utterance could be scored: {done.skipped} with bad audio, "
            f"{len(decoded)} decoded with empty references"
        )
    rates = error_rates(
        [refs[i] for i in scored], [normalize_transcript(done.hyps[i]) for i in scored]
    )
    audio_seconds = sum(done.samples.values()) / sample_rate
    return EvalResult(
        wer=rates.wer,
        cer=rates.cer,
        utterances=len(decoded),
        audio_seconds=audio_seconds,
        decode_seconds=done.seconds,
        rtf=done.seconds / audio_seconds,
        skipped=done.skipped,
        unscored=len(decoded) - len(scored),
    )


def result_json(result: EvalResult) -> str:
    """One line of JSON with the keys wer, cer, utterances, audio_seconds, rtf (and decode time)."""
    return json.dumps(
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(result).items()}
    )
