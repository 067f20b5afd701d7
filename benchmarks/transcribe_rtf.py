"""Real-time factor of the bundled (or any) model on the CPU: offline and streaming.

    python benchmarks/transcribe_rtf.py [--model M] [--threads 1] [--seconds 60]
        [--chunk-ms 160 320 640] [--audio FILE] [--decoding greedy beam beam+lm --lm LM]

The audio is real synthetic speech: utterances of ``--manifest`` (a ``mamba-asr synth`` corpus)
joined end to end to ``--seconds`` of audio and written as one FLAC file (or ``--audio``). Times
``transcribe_file`` (offline, 30 s windows) and ``transcribe_file(chunk_ms=...)`` (chunk by chunk) with each of
``--decoding``'s searches (greedy; beam: 4 hypotheses; beam+lm: the same with ``--lm``, by
default the bundled LM, fused at the CLI's default weights) on ``--threads`` torch threads,
each the median of ``--repeats`` runs after one warm-up, audio reading and features included. RTF = processing seconds / audio seconds. Writes
benchmarks/results/transcribe_rtf.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_asr import load_model
from mamba_asr.audio import load_audio
from mamba_asr.data import read_manifest
from mamba_asr.decode import DecodingOptions
from mamba_asr.decode.options import LENGTH_BONUS, LM_WEIGHT
from mamba_asr.pretrained import bundled_lm
from mamba_asr.transcription import transcribe_file
from timing import RESULTS, median_ms


def speech_file(manifest: Path, seconds: float, out: Path) -> Path:
    waves, total = [], 0.0
    for utt in read_manifest(manifest):
        waves.append(load_audio(utt.audio, 16000))
        total += len(waves[-1]) / 16000
        if total >= seconds:
            break
    sf.write(out, np.concatenate(waves)[: int(seconds * 16000)], 16000, format="FLAC")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--manifest", type=Path, default=None, help="synthetic corpus manifest")
    p.add_argument("--audio", type=Path, default=None, help="or an audio file to time")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-ms", type=float, nargs="+", default=[160.0, 320.0, 640.0])
    p.add_argument(
        "--decoding", nargs="+", choices=("greedy", "beam", "beam+lm"), default=["greedy"]
    )
    p.add_argument("--lm", default=None, help="LM file for beam+lm (default: the bundled LM)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=RESULTS / "transcribe_rtf.json")
    args = p.parse_args()
    if (args.audio is None) == (args.manifest is None):
        p.error("give --audio FILE or --manifest MANIFEST")
    lm = args.lm or bundled_lm()
    if "beam+lm" in args.decoding and lm is None:
        p.error("--decoding beam+lm needs --lm FILE")
    torch.set_num_threads(args.threads)
    asr = load_model(args.model, device="cpu")
    searches = {
        "greedy": DecodingOptions(strategy="greedy"),
        "beam": DecodingOptions(strategy="beam", beam_size=4, lm=None),
    }
    if lm is not None:
        searches["beam+lm"] = DecodingOptions(
            strategy="beam", beam_size=4, lm=str(lm), lm_weight=LM_WEIGHT, length_bonus=LENGTH_BONUS
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio or speech_file(args.manifest, args.seconds, Path(tmp) / "speech.flac")
        seconds = sf.info(str(audio)).duration
        for name in args.decoding:
            opts = searches[name]
            run = lambda o=opts: transcribe_file(asr, audio, o)  # noqa: E731
            rows.append((name, "offline", None, median_ms(run, args.repeats) / 1e3))
            for chunk in args.chunk_ms:
                run = lambda o=opts, c=chunk: transcribe_file(asr, audio, o, chunk_ms=c)  # noqa: E731
                rows.append((name, "streaming", chunk, median_ms(run, args.repeats) / 1e3))
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, torch {torch.__version__}, {args.threads} thread(s), {seconds:.1f} s of audio")
    print("| decoding | mode | chunk ms | seconds | RTF |\n|---|---|---|---|---|")
    results = []
    for name, mode, chunk, t in rows:
        ms = "" if chunk is None else f"{chunk:.0f}"
        print(f"| {name} | {mode} | {ms} | {t:.2f} | {t / seconds:.4f} |")
        results.append(
            {"decoding": name, "mode": mode, "chunk_ms": chunk, "seconds": t, "rtf": t / seconds}
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "audio_seconds": seconds,
                                     "torch": torch.__version__, "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
