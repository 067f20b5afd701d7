"""The ONNX recognizer against PyTorch on a dev set: transcripts equal token for token, and WER.

    mamba-asr export onnx --out /tmp/mct-onnx --int8
    python benchmarks/onnx_dev.py DEV/manifest.jsonl --onnx /tmp/mct-onnx [--model MODEL]
        [--modes offline stream] [--strategy beam|greedy] [--json OUT]

Every utterance is transcribed by PyTorch (the bundled model, or ``--model``), by the export's
fp32 graphs and by its int8 graphs, each way of ``--modes``: offline (the utterance as one
segment, the endpoint rule off: what ``mamba-asr eval`` does without ``--stream``) and stream
(320 ms steps with the endpoint rule: ``eval --stream``, ``transcribe --stream``). Decoding is
the CLI's default (beam search of 10 with the model's LM) or ``--strategy greedy``. For each
way and engine it prints how many transcripts equal PyTorch's exactly (every segment, token
and word with its times: ``Transcript.to_dict()``) and the WER as ``mamba-asr eval`` scores it
(``normalize_transcript``, jiwer), and writes the numbers and the utterances that differ to
``--json`` (default benchmarks/results/onnx_dev.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mamba_asr import load_model
from mamba_asr.audio.io import load_audio
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.evaluate import load_test_set
from mamba_asr.runtime.onnx import OnnxASR
from mamba_asr.text import error_rates, normalize_transcript
from mamba_asr.transcript import Transcript
from mamba_asr.transcription import transcribe_waveform

ROOT = Path(__file__).resolve().parents[1]
MODES = {"offline": (None, EndpointConfig(enabled=False)), "stream": (320.0, EndpointConfig())}


def transcribe(
    asr: object,
    wave: np.ndarray,
    options: DecodingOptions,
    chunk_ms: float | None,
    endpoint: EndpointConfig,
) -> Transcript:
    if isinstance(asr, OnnxASR):
        return asr.transcribe_waveform(wave, 16000, options, chunk_ms=chunk_ms, endpoint=endpoint)
    return transcribe_waveform(asr, wave, 16000, options, chunk_ms=chunk_ms, endpoint=endpoint)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="test set: a JSONL manifest or a LibriSpeech-layout folder")
    p.add_argument("--onnx", type=Path, required=True, help="export folder (with --int8)")
    p.add_argument("--model", default=None, help="PyTorch model (default: the bundled model)")
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["offline", "stream"])
    p.add_argument("--strategy", choices=("beam", "greedy"), default="beam")
    p.add_argument(
        "--engines", nargs="+", choices=("pytorch", "fp32", "int8"),
        default=["pytorch", "fp32", "int8"], help="(all; equality needs pytorch)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/onnx_dev.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    utterances = load_test_set(args.manifest)
    make = {
        "pytorch": lambda: load_model(args.model, device="cpu"),
        "fp32": lambda: OnnxASR.load(args.onnx, threads=args.threads),
        "int8": lambda: OnnxASR.load(args.onnx, int8=True, threads=args.threads),
    }
    engines = {("" if e == "pytorch" else "onnx ") + e: make[e]() for e in args.engines}
    options = DecodingOptions(strategy=args.strategy)
    refs = [normalize_transcript(u.text) for u in utterances]
    waves = [load_audio(u.audio, 16000) for u in utterances]
    report: dict = {"manifest": str(args.manifest), "utterances": len(utterances),
                    "strategy": args.strategy, "modes": {}}  # fmt: skip
    for mode in args.modes:
        chunk_ms, endpoint = MODES[mode]
        got: dict[str, list[dict]] = {}
        for name, asr in engines.items():
            got[name] = [transcribe(asr, w, options, chunk_ms, endpoint).to_dict() for w in waves]
        rows = {}
        for name, transcripts in got.items():
            hyps = [normalize_transcript(t["text"]) for t in transcripts]
            scored = [i for i, r in enumerate(refs) if r]
            rates = error_rates([refs[i] for i in scored], [hyps[i] for i in scored])
            reference = got.get("pytorch")
            differ = [u.id for u, a, b in zip(utterances, transcripts, reference or transcripts,
                                              strict=True) if a != b]  # fmt: skip
            rows[name] = {"wer": rates.wer, "cer": rates.cer, "equal": len(utterances) - len(differ),
                          "differ": differ}  # fmt: skip
            same = f"equal to PyTorch {len(utterances) - len(differ)}/{len(utterances)}"
            print(f"{mode:8s} {name:10s} WER {100 * rates.wer:6.2f}%  CER {100 * rates.cer:5.2f}%  "
                  + (same if reference else ""), flush=True)  # fmt: skip
        report["modes"][mode] = rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
