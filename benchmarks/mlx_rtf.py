"""Real-time factor of the MLX backend against PyTorch (MPS and CPU): for Apple machines.

    python benchmarks/mlx_rtf.py [--backends mlx torch-mps torch-cpu] [--seconds 60]
        [--decoding greedy beam+lm] [--chunk-ms 320] [--repeats 3] [--threads N]
        [--model M] [--audio FILE] [--scan-chunk 64] [--scan-compile on|off]
        [--json benchmarks/results/mlx_rtf.json]

Needs ``pip install "mamba-asr[mlx]"``. The audio is ``examples/hello.flac`` (2.7 s of speech)
repeated with 1 s pauses to ``--seconds`` (or ``--audio``), so the endpoint rule cuts it into
segments as it would a recording. For each backend (those given and available; ``torch-mps``
only where ``torch.backends.mps.is_available()``) and each search of ``--decoding`` (greedy;
beam+lm: beam search with the model's shipped LM, the default of ``mamba-asr transcribe``), it
times ``transcribe_file`` offline (its default pieces) and streaming (``--chunk-ms``), audio reading and
features included, and the encoder alone on the first 30 s (``encode``: features -> encoder
output, MLX evaluated, MPS synchronised), each the median of ``--repeats`` runs after one
warm-up (``--scan-chunk`` and ``--scan-compile`` set the MLX scan's chunk and mx.compile,
see ``mamba_asr.backends.mlx.scan``). RTF = processing seconds / audio seconds (below 1: faster than real time). ``same``
says whether the transcript equals the first backend's, token for token.

Output: a header line with the command, the machine, the versions and the audio length, then
one Markdown table (a row per backend, search and mode), for example::

    # python benchmarks/mlx_rtf.py --seconds 60
    # arm64 (Darwin 24.1.0), mlx 0.32.4 (Device(gpu, 0)), torch 2.13.0, 4 thread(s), 60.0 s of audio
    | backend | decoding | mode | chunk ms | seconds | RTF | same |
    |---|---|---|---|---|---|---|
    | mlx | - | encode | | 0.041 | 0.0014 | |
    | mlx | greedy | offline | | 1.234 | 0.0206 | yes |
    ...

and the same rows as JSON in ``--json``. On Linux ``mlx[cpu]`` runs on a reference BLAS and its
elementwise work on one core: Linux MLX timings say nothing about Apple hardware.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_asr import load_model
from mamba_asr.audio import load_audio
from mamba_asr.decode import DecodingOptions
from mamba_asr.transcription import transcribe_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hello.flac"
SEARCHES = {"greedy": DecodingOptions(strategy="greedy"), "beam+lm": DecodingOptions()}
BACKENDS = ("mlx", "torch-mps", "torch-cpu")


def speech_file(seconds: float, out: Path) -> Path:
    """hello.flac and 1 s of silence, repeated to ``seconds`` of 16 kHz audio."""
    speech = load_audio(EXAMPLE, 16000)
    repeat = np.concatenate([speech, np.zeros(16000, np.float32)])
    reps = int(np.ceil(seconds * 16000 / repeat.shape[0]))
    sf.write(out, np.tile(repeat, reps)[: int(seconds * 16000)], 16000, format="FLAC")
    return out


def available(backend: str) -> bool:
    if backend == "mlx":
        return importlib.util.find_spec("mlx") is not None
    if backend == "torch-mps":
        return torch.backends.mps.is_available()
    return True


def load(backend: str, model: str | None):
    if backend == "mlx":
        from mamba_asr.backends.mlx import load as load_mlx

        return load_mlx(model)
    return load_model(model, device="mps" if backend == "torch-mps" else "cpu")


def sync(backend: str, result: object = None) -> None:
    """Wait for the work behind ``result``: MLX evaluates lazily, MPS runs asynchronously."""
    if backend == "mlx":
        import mlx.core as mx

        if isinstance(result, mx.array):
            mx.eval(result)
    elif backend == "torch-mps":
        torch.mps.synchronize()


def median_seconds(fn, backend: str, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up (MLX compiles, MPS builds
    kernels), and the last result."""
    result = fn()
    sync(backend, result)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync(backend, result)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def encode_fn(asr, backend: str, audio: Path):
    """features -> encoder output of the first 30 s (features computed once, outside)."""
    device = next(asr.parameters()).device
    wave = torch.from_numpy(load_audio(audio, 16000)[: 30 * 16000]).to(device)[None]
    with torch.no_grad():
        feats, lengths = asr.features(wave, torch.tensor([wave.shape[1]], device=device))
    if backend == "mlx":
        feats_np, lengths_np = feats.cpu().numpy(), lengths.cpu().numpy()
        return lambda: asr.model.encode(feats_np, lengths_np)[0]

    def run():
        with torch.no_grad():
            return asr.model.encode(feats, lengths).memory

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--model", default=None, help="model file or MLX folder (default: bundled)")
    p.add_argument("--audio", type=Path, default=None, help="an audio file instead")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--decoding", nargs="+", choices=tuple(SEARCHES), default=list(SEARCHES))
    p.add_argument("--chunk-ms", type=float, nargs="*", default=[320.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--scan-chunk", type=int, default=None, help="MLX scan chunk (64)")
    p.add_argument("--scan-compile", choices=("on", "off"), default="on", help="mx.compile")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/mlx_rtf.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in args.backends if available(b)]
    if "mlx" in backends:
        from mamba_asr.backends.mlx import scan

        scan.CHUNK = args.scan_chunk or scan.CHUNK
        scan.COMPILED = args.scan_compile == "on"
    skipped = sorted(set(args.backends) - set(backends))
    rows, reference = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio or speech_file(args.seconds, Path(tmp) / "speech.flac")
        seconds = sf.info(str(audio)).duration
        for backend in backends:
            asr = load(backend, args.model)
            t, _ = median_seconds(encode_fn(asr, backend, audio), backend, args.repeats)
            rows.append(dict(backend=backend, decoding="-", mode="encode", chunk_ms=None,
                             seconds=t, rtf=t / min(seconds, 30.0), same=None))  # fmt: skip
            for name in args.decoding:
                for chunk in [None, *args.chunk_ms]:

                    def run(a=asr, o=SEARCHES[name], c=chunk):
                        return transcribe_file(a, audio, o, chunk_ms=c)

                    t, transcript = median_seconds(run, backend, args.repeats)
                    key = (name, chunk)
                    reference.setdefault(key, transcript.to_json())
                    rows.append(dict(backend=backend, decoding=name,
                                     mode="offline" if chunk is None else "streaming",
                                     chunk_ms=chunk, seconds=t, rtf=t / seconds,
                                     same=transcript.to_json() == reference[key]))  # fmt: skip
    mlx_line = ""
    if "mlx" in backends:
        import mlx.core as mx

        mlx_line = f"mlx {mx.__version__} ({mx.default_device()}), "
    machine = f"{platform.machine()} ({platform.system()} {platform.release()})"
    print("# python benchmarks/mlx_rtf.py " + shlex.join(sys.argv[1:]))
    print(f"# {machine}, {mlx_line}torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), {seconds:.1f} s of audio"
          + (f"; not available here: {', '.join(skipped)}" if skipped else ""))  # fmt: skip
    print("| backend | decoding | mode | chunk ms | seconds | RTF | same |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        chunk = "" if r["chunk_ms"] is None else f"{r['chunk_ms']:.0f}"
        same = "" if r["same"] is None else ("yes" if r["same"] else "NO")
        print(f"| {r['backend']} | {r['decoding']} | {r['mode']} | {chunk} | "
              f"{r['seconds']:.3f} | {r['rtf']:.4f} | {same} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine, "torch": torch.__version__, "audio_seconds": seconds,
            "threads": torch.get_num_threads(), "mlx": mlx_line.strip(", ") or None}  # fmt: skip
    args.json.write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
