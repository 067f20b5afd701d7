"""Structured pruning of the bundled model: parameters, file size, dev WER and CPU real-time factor.

    python benchmarks/prune.py DEV/manifest.jsonl [--calib CALIB/manifest.jsonl] [--ratios 0.25 0.5]
        [--threads 1] [--seconds 60] [--json OUT]

For the model (``--model``, default the bundled one) and its pruned versions at each of
``--ratios`` (``mamba_asr.compress.prune``, as ``mamba-asr prune`` makes them, no fine-tuning):
weights only and, with ``--calib``, calibrated on its first ``--calib-utts`` utterances (the
removed channels' means folded into the next biases), both on the default groups (all but the
joiner), and calibrated with the joiner too. Each model is saved as ``mamba-asr prune`` saves it
(float16 storage like the bundled file) and loaded back; reported: parameters, file size, greedy
dev WER (``evaluate``, as ``mamba-asr eval --strategy greedy``) and RTF on ``--threads`` torch
threads (greedy, offline and streaming in 320 ms chunks, ``--seconds`` of the dev set's speech
joined into one file, the median of ``--repeats`` runs after a warm-up, as
``benchmarks/transcribe_rtf.py`` times it; the search's share follows the tokens a model emits,
so the encoder alone is timed too: features, front end and encoder over the whole file, and
chunk by chunk). First, the encoders of the default groups' shapes at each ratio are timed
taking turns (``--encoder-repeats`` rounds, the least noisy speed comparison; ``--timing-only``
stops there and adds it to an existing ``--json``). Writes ``--json`` (default
docs/results/prune_bundled.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from mamba_asr import load_model
from mamba_asr.asr import ASR
from mamba_asr.audio import load_audio
from mamba_asr.compress.prune import (
    GROUPS,
    calibration_stats,
    default_groups,
    group_widths,
    parameter_count,
    prune_asr,
    target_counts,
)
from mamba_asr.data import read_manifest
from mamba_asr.decode import DecodingOptions
from mamba_asr.evaluate import evaluate
from mamba_asr.transcription import transcribe_file
from timing import median_ms
from transcribe_rtf import speech_file

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def encoder_seconds(asr: ASR, audio: Path, repeats: int) -> tuple[float, float]:
    """Features + front end + encoder over the file: whole, and in 320 ms chunks (streaming);
    no search, whose cost follows the number of tokens a model emits."""
    wave = torch.from_numpy(load_audio(audio, 16000))[None]
    feats, lengths = asr.features(wave, torch.tensor([wave.shape[1]]))
    model = asr.model

    def whole() -> None:
        f, n = asr.features(wave, torch.tensor([wave.shape[1]]))
        model.encode(f, n)

    def chunked() -> None:
        state = model.init_state(1)
        for start in range(0, feats.shape[1], 32):  # 32 feature frames = 320 ms
            _, state = model.forward_chunk(feats[:, start : start + 32], state)

    if repeats == 1:  # one timed run, no warm-up (interleaved_encoder_rtf warms up itself)
        return median_ms(whole, 1, warmup=0) / 1e3, median_ms(chunked, 1, warmup=0) / 1e3
    return median_ms(whole, repeats) / 1e3, median_ms(chunked, repeats) / 1e3


@torch.no_grad()
def interleaved_encoder_rtf(models: dict[str, ASR], audio: Path, repeats: int) -> dict:
    """``encoder_seconds`` of several models taking turns, ``repeats`` rounds (the first a
    warm-up), so that drift of the machine's speed hits them alike: median RTF of each."""
    seconds = sf.info(str(audio)).duration
    times: dict[str, dict[str, list[float]]] = {k: {"whole": [], "stream": []} for k in models}
    for _ in range(repeats):
        for name, asr in models.items():
            whole, stream = encoder_seconds(asr, audio, 1)
            times[name]["whole"].append(whole)
            times[name]["stream"].append(stream)
    return {
        name: {mode: statistics.median(v[1:]) / seconds for mode, v in modes.items()}
        for name, modes in times.items()
    }


def measure(asr: ASR, path: Path, dev: list, audio: Path, args: argparse.Namespace) -> dict:
    greedy = DecodingOptions(strategy="greedy")
    torch.set_num_threads(args.eval_threads)
    result = evaluate(asr, dev, None, greedy)
    torch.set_num_threads(args.threads)
    seconds = sf.info(str(audio)).duration
    offline = median_ms(lambda: transcribe_file(asr, audio, greedy), args.repeats) / 1e3
    stream = (
        median_ms(lambda: transcribe_file(asr, audio, greedy, chunk_ms=320.0), args.repeats) / 1e3
    )
    enc_whole, enc_stream = encoder_seconds(asr, audio, args.repeats)
    return {
        "parameters": parameter_count(asr),
        "file_mb": path.stat().st_size / 1e6,
        "wer_greedy": result.wer,
        "cer_greedy": result.cer,
        "rtf_offline": offline / seconds,
        "rtf_stream_320ms": stream / seconds,
        "rtf_encoder": enc_whole / seconds,
        "rtf_encoder_stream_320ms": enc_stream / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dev", type=Path, help="dev manifest (mamba-asr synth)")
    p.add_argument("--calib", type=Path, default=None, help="calibration manifest")
    p.add_argument("--calib-utts", type=int, default=32)
    p.add_argument("--model", default=None)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--threads", type=int, default=1, help="torch threads for the RTF")
    p.add_argument("--eval-threads", type=int, default=2, help="torch threads for the WER")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--encoder-repeats", type=int, default=8,
        help="rounds of the interleaved encoder timing (the first a warm-up)",
    )  # fmt: skip
    p.add_argument(
        "--timing-only", action="store_true",
        help="only the interleaved encoder timing of the default groups' architectures",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=ROOT / "docs/results/prune_bundled.json")
    args = p.parse_args()
    dev = read_manifest(args.dev)
    asr = load_model(args.model, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = speech_file(args.dev, args.seconds, Path(tmp) / "speech.flac")
        torch.set_num_threads(args.threads)
        shapes = {"0": asr} | {  # the weights decide which channels, not how many: any criterion
            str(r): prune_asr(asr, groups=default_groups(), ratio=r) for r in args.ratios
        }
        encoder = interleaved_encoder_rtf(shapes, audio, args.encoder_repeats)
        print(f"encoder RTF (interleaved, {args.threads} thread(s)): {json.dumps(encoder)}")
        if args.timing_only:  # into the JSON of an earlier full run, if there is one
            data = json.loads(args.json.read_text()) if args.json.is_file() else {}
            data["encoder_rtf_interleaved"] = encoder
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(data, indent=1))
            return
        base = Path(tmp) / "base.pt"
        asr.save(base, half=True)
        rows.append({"ratio": 0.0, "criterion": "-", **measure(asr, base, dev, audio, args)})
        print(rows[-1], flush=True)
        stats = None
        if args.calib is not None:
            start = time.perf_counter()
            stats = calibration_stats(asr, args.calib, args.calib_utts)
            print(f"calibration: {time.perf_counter() - start:.1f} s", flush=True)
        variants = {  # name: (groups, calibrated)
            "weights": (default_groups(), False),
            "calibrated": (default_groups(), True),
            "calibrated, joiner too": (GROUPS, True),
        }
        for ratio in args.ratios:
            for criterion, (groups, calibrated) in variants.items():
                if calibrated and stats is None:
                    continue
                counts = target_counts(group_widths(asr, groups), ratio)
                small = prune_asr(asr, groups=groups, counts=counts,
                                  stats=stats if calibrated else None)  # fmt: skip
                path = Path(tmp) / f"p{ratio}-{criterion.replace(', ', '-')}.pt"
                small.save(path, half=True)
                small = load_model(str(path), device="cpu")
                row = {"ratio": ratio, "criterion": criterion, "groups": list(groups),
                       **measure(small, path, dev, audio, args)}  # fmt: skip
                rows.append(row)
                print(row, flush=True)
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, torch {torch.__version__}, RTF on {args.threads} thread(s), "
          f"dev {len(dev)} utterances")  # fmt: skip
    print(
        "| ratio | criterion | parameters | file MB | dev WER % (greedy) | RTF offline | "
        "RTF stream 320 ms | encoder RTF offline | encoder RTF stream |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['ratio']} | {r['criterion']} | {r['parameters']:,} | {r['file_mb']:.1f} | "
              f"{100 * r['wer_greedy']:.1f} | {r['rtf_offline']:.4f} | "
              f"{r['rtf_stream_320ms']:.4f} | {r['rtf_encoder']:.4f} | "
              f"{r['rtf_encoder_stream_320ms']:.4f} |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                     "cpu": cpu, "dev_utterances": len(dev), "rows": rows,
                                     "encoder_rtf_interleaved": encoder}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
