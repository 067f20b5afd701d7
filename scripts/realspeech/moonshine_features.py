"""A real-speech teacher's encoder features of every utterance of some manifests, for
``train.feature_kd`` (``mamba_asr.train.feature_kd``).

    python3 -m venv /tmp/v-peers
    /tmp/v-peers/bin/pip install moonshine-cpp==0.1.4 onnxruntime==1.22.1 soundfile==0.14.0 \\
        soxr==1.1.0 numpy==2.4.6 num2words==0.5.14 sentencepiece==0.2.3 tqdm==4.70.1
    PYTHONPATH=src /tmp/v-peers/bin/python scripts/realspeech/moonshine_features.py \\
        --manifest M [M ...] --out DIR [--frame-ms 80] [--threads 2]

The teacher is Moonshine base English's encoder (``models/base-en/encoder_model.ort`` inside the
``moonshine-cpp`` wheel, MIT; trained on real speech), run through onnxruntime on the samples
(mono 16 kHz, ``load_audio``); nothing is downloaded. Its last hidden state (416 values every
24 ms) is averaged into frames of ``--frame-ms`` (the student's encoder frame: 80 ms for the
Mamba-CNN transducers at 8x) as an adaptive average pool: an utterance of N samples gets
``round(N / (16 * frame_ms))`` frames (at least 1), frame i the mean of the teacher frames from
floor(i T / n) to ceil((i + 1) T / n).

Writes DIR/features.npy (float16, (frames of all utterances, 416), in manifest order) and
DIR/index.json: ``frame_ms``, ``dim``, ``teacher``, per-dimension ``mean`` and ``std`` over all
frames (the trainer standardises with them) and ``utterances``: id -> [first row, frames].
An id met twice (in two manifests) is an error naming it. Runs without torch, in the peers'
environment (``benchmarks/peers.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mamba_asr.audio.io import AudioError, load_audio
from mamba_asr.data.manifest import ManifestError, read_manifest
from mamba_asr.files import check_output

RATE = 16000


def adaptive_pool(x: np.ndarray, n: int) -> np.ndarray:
    """(T, D) -> (n, D): row i the mean of rows floor(i T / n) .. ceil((i + 1) T / n) - 1 (as
    ``torch.nn.functional.adaptive_avg_pool1d`` along T)."""
    t = x.shape[0]
    starts = (np.arange(n) * t) // n
    ends = -((-(np.arange(1, n + 1) * t)) // n)  # ceil
    csum = np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, 0, np.float64)])
    return ((csum[ends] - csum[starts]) / (ends - starts)[:, None]).astype(np.float32)


def frames_for(samples: int, frame_ms: int) -> int:
    """Frames an utterance of ``samples`` gets: round(samples / frame samples), at least 1."""
    return max(1, round(samples / (RATE * frame_ms / 1000)))


class MoonshineEncoder:
    """Moonshine base English's encoder from the moonshine-cpp wheel, on onnxruntime."""

    def __init__(self, threads: int) -> None:
        import moonshine_cpp
        import onnxruntime as ort

        path = Path(moonshine_cpp.__file__).parent / "models" / "base-en" / "encoder_model.ort"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.name = f"moonshine base-en encoder (moonshine-cpp {version('moonshine-cpp')})"

    # the encoder's convolutions need at least this many samples to give one frame
    MIN_SAMPLES = 1024

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """float32 samples (N,) at 16 kHz -> (T, 416) float32 hidden states."""
        if len(wave) < self.MIN_SAMPLES:
            wave = np.pad(wave, (0, self.MIN_SAMPLES - len(wave)))
        (hidden,) = self.session.run(None, {self.input: wave[None].astype(np.float32)})
        return hidden[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frame-ms", type=int, default=80)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        check_output(args.out / "features.npy", "--out", args.manifest, args.overwrite)
    except (OSError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    jobs: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for manifest in args.manifest:
        try:
            utterances = read_manifest(manifest)
        except ManifestError as exc:
            raise SystemExit(str(exc)) from None
        for utt in utterances:
            if utt.id in seen:
                raise SystemExit(f"{manifest}: id {utt.id!r} is in an earlier manifest too")
            seen.add(utt.id)
            jobs.append((utt.id, utt.audio))
    encoder = MoonshineEncoder(args.threads)
    chunks, index, row0, audio_s = [], {}, 0, 0.0
    start = time.perf_counter()
    for uid, audio in tqdm(jobs, desc="teacher features", unit="utt", mininterval=10):
        try:
            wave = load_audio(audio, RATE)
        except AudioError as exc:
            raise SystemExit(f"{uid}: {exc}") from None
        audio_s += len(wave) / RATE
        pooled = adaptive_pool(encoder(wave), frames_for(len(wave), args.frame_ms))
        chunks.append(pooled.astype(np.float16))
        index[uid] = [row0, len(pooled)]
        row0 += len(pooled)
    wall = time.perf_counter() - start
    feats = np.concatenate(chunks)
    stats = feats.astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "features.npy", feats)
    meta = {
        "teacher": encoder.name,
        "frame_ms": args.frame_ms,
        "dim": int(feats.shape[1]),
        "mean": stats.mean(0).round(5).tolist(),
        "std": stats.std(0).round(5).tolist(),
        "manifests": [str(m) for m in args.manifest],
        "audio_seconds": round(audio_s, 1),
        "wall_seconds": round(wall, 1),
        "utterances": index,
    }
    (args.out / "index.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
    print(
        f"{len(index)} utterances, {audio_s / 3600:.2f} h, {row0} frames of {feats.shape[1]} "
        f"in {wall:.0f} s (RTF {wall / max(audio_s, 1e-9):.4f}) -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
