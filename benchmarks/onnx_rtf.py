"""Streaming real-time factor and peak memory on one CPU thread: PyTorch vs ONNX fp32 vs ONNX int8
(vs ONNX int4 where the export has those graphs).

    mamba-asr export onnx --out /tmp/mct-onnx --int8 [--int4]
    python benchmarks/onnx_rtf.py --onnx /tmp/mct-onnx [--audio examples/hello.flac]
        [--seconds 30] [--chunk-ms 320] [--threads 1] [--decoding greedy beam+lm] [--repeats 5]

The audio (``--audio``, default examples/hello.flac) is repeated with 0.5 s of silence between
copies to ``--seconds``. Each engine transcribes it as ``mamba-asr transcribe --stream`` does
(``--chunk-ms`` per step, the endpoint rule, audio reading and features included): PyTorch
(the bundled model, or ``--model``, on ``--threads`` torch threads) and the export on
onnxruntime (``--threads`` intra-op threads), fp32 and int8, with each of ``--decoding``'s
searches (greedy; beam+lm: beam search of 10 with the model's LM, the default of the CLI).
Each engine runs in its own process (the ONNX ones import no torch), so its peak memory
(maximum resident set size: the libraries, the model and the decoding) is its own. Each time
is the median of ``--repeats`` runs after one warm-up. RTF = processing seconds / audio
seconds; "same" says whether the text equals PyTorch's. Prints a Markdown table with the
machine, the load average before and after, and the command; writes
benchmarks/results/onnx_rtf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("pytorch", "onnx fp32", "onnx int8", "onnx int4")


def long_audio(audio: Path, seconds: float, out: Path) -> Path:
    """``audio`` repeated, 0.5 s of silence between copies, cut to ``seconds``."""
    import numpy as np
    import soundfile as sf

    from mamba_asr.audio.io import load_audio

    wave = load_audio(audio, 16000)
    piece = np.concatenate([wave, np.zeros(8000, np.float32)])
    reps = int(np.ceil(seconds * 16000 / piece.size))
    sf.write(out, np.tile(piece, reps)[: int(seconds * 16000)], 16000, format="FLAC")
    return out


def worker(args: argparse.Namespace) -> None:
    """One engine in this process: {decoding: [median seconds, text]}, versions, peak RSS."""
    from mamba_asr.decode.options import DecodingOptions

    searches = {"greedy": DecodingOptions(strategy="greedy"), "beam+lm": DecodingOptions()}
    if args.worker == "pytorch":
        import torch

        from mamba_asr import load_model
        from mamba_asr.transcription import transcribe_file

        torch.set_num_threads(args.threads)
        asr = load_model(args.model, device="cpu")
        version = f"torch {torch.__version__}"

        def run(options: DecodingOptions) -> str:
            return transcribe_file(asr, args.audio, options, chunk_ms=args.chunk_ms).text
    else:
        import onnxruntime

        from mamba_asr.runtime.onnx import OnnxASR

        onnx = OnnxASR.load(args.onnx, int8=args.worker.endswith("int8"), threads=args.threads,
                            int4=args.worker.endswith("int4"))  # fmt: skip
        version = f"onnxruntime {onnxruntime.__version__}"

        def run(options: DecodingOptions) -> str:
            return onnx.transcribe_file(args.audio, options, chunk_ms=args.chunk_ms).text

    out: dict = {"version": version, "results": {}}
    for name in args.decoding:
        text = run(searches[name])  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(searches[name])
            times.append(time.perf_counter() - start)
        out["results"][name] = {"seconds": statistics.median(times), "text": text}
    out["torch_imported"] = "torch" in sys.modules
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/onnx_rtf.json")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import soundfile as sf

    load_before = os.getloadavg()
    config = json.loads((args.onnx / "config.json").read_text())
    engines = [e for e in ENGINES if e != "onnx int4" or config.get("int4")]
    with tempfile.TemporaryDirectory() as tmp:
        audio = long_audio(args.audio, args.seconds, Path(tmp) / "speech.flac")
        seconds = sf.info(str(audio)).duration
        runs = {}
        for engine in engines:
            cmd = [sys.executable, __file__, "--worker", engine, "--onnx", str(args.onnx),
                   "--audio", str(audio), "--chunk-ms", str(args.chunk_ms),
                   "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--decoding", *args.decoding]  # fmt: skip
            if args.model:
                cmd += ["--model", args.model]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    versions = ", ".join(dict.fromkeys(r["version"] for r in runs.values()))
    print(f"python benchmarks/onnx_rtf.py --onnx {args.onnx} --seconds {args.seconds:g} "
          f"--chunk-ms {args.chunk_ms:g} --threads {args.threads} --repeats {args.repeats}")  # fmt: skip
    print(f"# {cpu_name()}, {os.cpu_count()} cores, {versions}, {args.threads} thread(s), "
          f"{seconds:.1f} s of audio, {args.chunk_ms:g} ms chunks, load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    print("| decoding | engine | seconds | RTF | vs PyTorch | peak memory | same text |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name in args.decoding:
        base = runs["pytorch"]["results"][name]
        for engine in engines:
            r = runs[engine]["results"][name]
            same = "yes" if r["text"] == base["text"] else "no"
            print(f"| {name} | {engine} | {r['seconds']:.2f} | {r['seconds'] / seconds:.4f} | "
                  f"{base['seconds'] / r['seconds']:.2f}x | {runs[engine]['peak_rss_mb']:.0f} MB | "
                  f"{same} |")  # fmt: skip
            results.append({"decoding": name, "engine": engine, "seconds": r["seconds"],
                            "rtf": r["seconds"] / seconds, "same_text": same == "yes",
                            "peak_rss_mb": runs[engine]["peak_rss_mb"],
                            "torch_imported": runs[engine]["torch_imported"]})  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "cpu": cpu_name(), "threads": args.threads, "audio_seconds": seconds,
        "chunk_ms": args.chunk_ms, "versions": versions, "repeats": args.repeats,
        "load_average": [load_before[0], load_after[0]], "results": results,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
