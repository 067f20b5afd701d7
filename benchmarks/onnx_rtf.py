"""Streaming real-time factor on one CPU thread: PyTorch vs ONNX fp32 vs ONNX int8.

    mamba-asr export onnx --out /tmp/mct-onnx --int8
    python benchmarks/onnx_rtf.py --onnx /tmp/mct-onnx [--audio examples/hello.flac]
        [--seconds 30] [--chunk-ms 320] [--threads 1] [--decoding greedy beam+lm] [--repeats 3]

The audio (``--audio``, default examples/hello.flac) is repeated with 0.5 s of silence between
copies to ``--seconds``. Each engine transcribes it as ``mamba-asr transcribe --stream`` does
(``--chunk-ms`` per step, the endpoint rule, audio reading and features included): PyTorch
(the bundled model, or ``--model``, on ``--threads`` torch threads) and the export on
onnxruntime (``--threads`` intra-op threads), fp32 and int8, with each of ``--decoding``'s
searches (greedy; beam+lm: beam search of 10 with the model's LM, the default of the CLI).
Each time is the median of ``--repeats`` runs after one warm-up. RTF = processing seconds /
audio seconds; "same" says whether the text equals PyTorch's. Writes
benchmarks/results/onnx_rtf.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import soundfile as sf
import torch

from mamba_asr import load_model
from mamba_asr.audio.io import load_audio
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.runtime.onnx import OnnxASR
from mamba_asr.transcription import transcribe_file
from timing import median_ms

ROOT = Path(__file__).resolve().parents[1]


def long_audio(audio: Path, seconds: float, out: Path) -> Path:
    """``audio`` repeated, 0.5 s of silence between copies, cut to ``seconds``."""
    wave = load_audio(audio, 16000)
    piece = np.concatenate([wave, np.zeros(8000, np.float32)])
    reps = int(np.ceil(seconds * 16000 / piece.size))
    sf.write(out, np.tile(piece, reps)[: int(seconds * 16000)], 16000, format="FLAC")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, required=True, help="export folder (with --int8)")
    p.add_argument("--model", default=None, help="PyTorch model (default: the bundled model)")
    p.add_argument("--audio", type=Path, default=ROOT / "examples" / "hello.flac")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--chunk-ms", type=float, default=320.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--decoding", nargs="+", choices=("greedy", "beam+lm"), default=["greedy", "beam+lm"]
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/onnx_rtf.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engines = {
        "pytorch": load_model(args.model, device="cpu"),
        "onnx fp32": OnnxASR.load(args.onnx, threads=args.threads),
        "onnx int8": OnnxASR.load(args.onnx, int8=True, threads=args.threads),
    }
    searches = {"greedy": DecodingOptions(strategy="greedy"), "beam+lm": DecodingOptions()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = long_audio(args.audio, args.seconds, Path(tmp) / "speech.flac")
        seconds = sf.info(str(audio)).duration
        for name in args.decoding:
            reference = None
            for engine, asr in engines.items():
                if engine == "pytorch":
                    run = lambda a=asr, o=searches[name]: transcribe_file(  # noqa: E731
                        a, audio, o, chunk_ms=args.chunk_ms
                    )
                else:
                    run = lambda a=asr, o=searches[name]: a.transcribe_file(  # noqa: E731
                        audio, o, chunk_ms=args.chunk_ms
                    )
                text = run().text
                reference = text if reference is None else reference
                t = median_ms(run, args.repeats) / 1e3
                rows.append((name, engine, t, text == reference))
    cpu = platform.processor() or platform.machine()
    print(
        f"# {cpu}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{args.threads} thread(s), {seconds:.1f} s of audio, {args.chunk_ms:g} ms chunks"
    )
    print("| decoding | engine | seconds | RTF | same text |\n|---|---|---|---|---|")
    results = []
    for name, engine, t, same in rows:
        print(f"| {name} | {engine} | {t:.2f} | {t / seconds:.4f} | {'yes' if same else 'no'} |")
        results.append({"decoding": name, "engine": engine, "seconds": t,
                        "rtf": t / seconds, "same_text": same})  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "threads": args.threads, "audio_seconds": seconds, "chunk_ms": args.chunk_ms,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "results": results,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
