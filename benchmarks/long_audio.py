"""Long audio: is the last stretch of an hour recognised as well as the first?

    python benchmarks/long_audio.py [--minutes 60] [--slice-minutes 5] [--model M]
        [--decoding greedy] [--threads 2]

The audio: one sentence spoken by flite's ``slt`` voice (a voice kept out of every training
and validation set: held-out speech), repeated with 1 s of silence after each repeat to
``--minutes`` of 16 kHz audio, written as one FLAC file a repeat at a time. It is transcribed
twice with the default path (``transcribe_file``): offline (30 s pieces) and streaming
(320 ms chunks). Per ``--slice-minutes`` slice: the share of repeats whose first word is
recognised (a word starting inside the repeat's first 0.8 s equals the sentence's first
word), the word error rate of the slice (jiwer, words falling inside the slice's repeats),
and the resident memory of the process while the stream passed that slice. Also: whether the
streamed transcript equals the offline one. Prints a table and writes
benchmarks/results/long_audio.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import torch

from mamba_asr import load_model
from mamba_asr.audio import load_audio
from mamba_asr.decode import DecodingOptions
from mamba_asr.transcription import transcribe_file
from timing import RESULTS

SENTENCE = "please call me back when you have a moment"
PAUSE_S = 1.0


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def speak(text: str, out: Path) -> np.ndarray:
    """``text`` by flite's slt voice at 16 kHz, (N,) float32."""
    if shutil.which("flite") is None:
        raise SystemExit("flite is not installed (apt-get install flite)")
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(out)], check=True)
    return load_audio(out, 16000)


def build(minutes: float, out: Path, tmp: Path) -> tuple[list[float], float]:
    """The long file; returns each repeat's start (s) and the length of one repeat (s)."""
    speech = speak(SENTENCE, tmp / "sentence.wav")
    repeat = np.concatenate([speech, np.zeros(int(PAUSE_S * 16000), np.float32)])
    n = int(np.ceil(minutes * 60 / (repeat.shape[0] / 16000)))
    with sf.SoundFile(out, "w", 16000, 1, format="FLAC") as f:
        for _ in range(n):
            f.write(repeat)
    step = repeat.shape[0] / 16000
    return [i * step for i in range(n)], speech.shape[0] / 16000


def score(transcript, starts: list[float], speech_s: float, slice_s: float) -> list[dict]:
    """Per slice: first-word accuracy and WER over the repeats starting in it."""
    first = SENTENCE.split()[0].upper()
    words = transcript.words
    rows = []
    for s0 in np.arange(0.0, starts[-1] + 1e-9, slice_s):
        idx = [i for i, t in enumerate(starts) if s0 <= t < s0 + slice_s]
        hits, refs, hyps = 0, [], []
        for i in idx:
            a, b = starts[i], starts[i] + speech_s + PAUSE_S
            inside = [w for w in words if w.start is not None and a - 0.1 <= w.start < b - 0.1]
            hits += bool(inside) and inside[0].text == first and inside[0].start < a + 0.8
            refs.append(SENTENCE.upper())
            hyps.append(" ".join(w.text for w in inside))
        wer = jiwer.wer(refs, hyps) if refs else float("nan")
        rows.append({"slice_start_min": s0 / 60, "repeats": len(idx), "first_word": hits / max(1, len(idx)), "wer": wer})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--slice-minutes", type=float, default=5.0)
    p.add_argument("--model", default=None)
    p.add_argument("--decoding", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=RESULTS / "long_audio.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    asr = load_model(args.model, device="cpu")
    options = DecodingOptions(strategy=args.decoding)
    slice_s = args.slice_minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "long.flac"
        starts, speech_s = build(args.minutes, audio, Path(tmp))
        t0 = time.perf_counter()
        offline = transcribe_file(asr, audio, options)
        offline_s = time.perf_counter() - t0
        memory: dict[int, float] = {}

        def sample(_text: str, seconds: float) -> None:
            memory.setdefault(int(seconds // slice_s), _rss_mib())

        t0 = time.perf_counter()
        streamed = transcribe_file(asr, audio, options, chunk_ms=320, on_partial=sample)
        stream_s = time.perf_counter() - t0
    rows = score(offline, starts, speech_s, slice_s)
    stream_rows = score(streamed, starts, speech_s, slice_s)
    for i, (row, srow) in enumerate(zip(rows, stream_rows, strict=True)):
        row.update(stream_first_word=srow["first_word"], stream_wer=srow["wer"])
        row["rss_mib"] = memory.get(i, float("nan"))
    equal = offline.to_json() == streamed.to_json()
    duration = offline.duration
    cmd = f"python benchmarks/long_audio.py --minutes {args.minutes:g} --decoding {args.decoding}"
    print(f"# {cmd}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; {duration / 60:.1f} min of flite slt, {len(starts)} repeats, "
          f"{len(offline.segments)} segments; streaming == offline: {equal}; RTF offline "
          f"{offline_s / duration:.4f}, streaming {stream_s / duration:.4f}")  # fmt: skip
    print("| minutes | repeats | first word offline | first word streaming | WER offline | WER streaming | RSS MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slice_start_min']:.0f}-{r['slice_start_min'] + args.slice_minutes:.0f} | "
              f"{r['repeats']} | {100 * r['first_word']:.1f}% | {100 * r['stream_first_word']:.1f}% | "
              f"{100 * r['wer']:.1f}% | {100 * r['stream_wer']:.1f}% | {r['rss_mib']:.0f} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": cmd, "minutes": duration / 60, "repeats": len(starts),
        "segments": len(offline.segments), "streaming_equals_offline": equal,
        "rtf_offline": offline_s / duration, "rtf_streaming": stream_s / duration, "slices": rows,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
