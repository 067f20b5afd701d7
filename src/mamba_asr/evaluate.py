"""Evaluate a model on a test set: WER, CER, real-time factor, and every hypothesis beside its
reference.

A test set is a JSONL manifest or a LibriSpeech-layout folder (SPEAKER/CHAPTER/*.flac with
*.trans.txt). Utterances are decoded in batches sorted by duration; the real-time factor is decoding
time (feature extraction, model and search, audio loading excluded) over audio seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mamba_asr.asr import ASR
from mamba_asr.atomic import atomic_write_text
from mamba_asr.audio import load_audio
from mamba_asr.data import DynamicBatchSampler, Utterance, read_manifest, scan_librispeech
from mamba_asr.decode import DecodingOptions
from mamba_asr.text import error_rates, normalize_transcript


@dataclass(frozen=True)
class EvalResult:
    """Corpus error rates (fractions), counts and speed of one evaluation."""

    wer: float
    cer: float
    utterances: int
    audio_seconds: float
    decode_seconds: float
    rtf: float


def load_test_set(path: str | Path) -> list[Utterance]:
    """Utterances of a JSONL manifest (a file) or a LibriSpeech-layout folder."""
    path = Path(path)
    if path.is_dir():
        return scan_librispeech(path, progress=False).utterances
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest or folder")
    return read_manifest(path)


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


def evaluate(
    asr: ASR,
    utterances: Sequence[Utterance],
    hypotheses_path: str | Path | None = None,
    options: DecodingOptions | None = None,
    batch_seconds: float = 60.0,
    progress: bool = False,
) -> EvalResult:
    """Decode ``utterances`` with ``asr`` and score them against their texts.

    References and hypotheses are compared after ``normalize_transcript`` (LibriSpeech style).
    ``hypotheses_path``: a JSONL file, one {"id", "ref", "hyp", "duration"} per utterance.
    """
    if not utterances:
        raise ValueError("the test set has no utterances")
    device = next(asr.parameters()).device
    hyps: dict[int, str] = {}
    decode_seconds = 0.0
    batches = _batches(utterances, batch_seconds)
    for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress):
        waves = [torch.from_numpy(load_audio(utterances[i].audio, asr.sample_rate)) for i in batch]
        padded, lengths = _pad(waves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        texts = asr.transcribe_batch(padded.to(device), lengths.to(device), options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_seconds += time.perf_counter() - start
        hyps.update(zip(batch, texts, strict=True))
    refs = [normalize_transcript(u.text) for u in utterances]
    hyp_list = [normalize_transcript(hyps[i]) for i in range(len(utterances))]
    rates = error_rates(refs, hyp_list)
    audio_seconds = float(sum(u.duration for u in utterances))
    if hypotheses_path is not None:
        lines = [
            json.dumps({"id": u.id, "ref": r, "hyp": h, "duration": u.duration})
            for u, r, h in zip(utterances, refs, hyp_list, strict=True)
        ]
        atomic_write_text(hypotheses_path, "\n".join(lines) + "\n")
    return EvalResult(
        wer=rates.wer,
        cer=rates.cer,
        utterances=len(utterances),
        audio_seconds=audio_seconds,
        decode_seconds=decode_seconds,
        rtf=decode_seconds / audio_seconds,
    )


def result_json(result: EvalResult) -> str:
    """One line of JSON with the keys wer, cer, utterances, audio_seconds, rtf (and decode time)."""
    return json.dumps(
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(result).items()}
    )
