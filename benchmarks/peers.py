"""Peer recognizers whose models ship inside their PyPI wheels, scored like the bundled model.

    python3 -m venv /tmp/v-peers
    /tmp/v-peers/bin/pip install pocketsphinx==5.1.1 moonshine-cpp==0.1.4 soundfile==0.14.0 \\
        soxr==1.1.0 jiwer==4.0.0 numpy==2.4.6 num2words==0.5.14 sentencepiece==0.2.3
    PYTHONPATH=src /tmp/v-peers/bin/python benchmarks/peers.py --manifest M [M ...] \\
        [--engines pocketsphinx moonshine] [--pooled] [--json OUT]

Runs without torch, in its own environment: the project's torch-free parts (``mamba_asr.text``
needs num2words and sentencepiece, ``mamba_asr.audio.io`` soundfile and soxr) come from
``src`` through ``PYTHONPATH``. Engines, each with the model inside its wheel and its default
settings; nothing is downloaded at run time:

- ``pocketsphinx``: PocketSphinx's ``Decoder()``, the bundled US English acoustic model
  (``en-us``), dictionary (``cmudict-en-us.dict``) and trigram LM (``en-us.lm.bin``);
- ``moonshine``: Moonshine base (English, ``models/base-en`` of the ``moonshine-cpp`` wheel),
  through its C library; the wheel's ``MoonshineModel.transcribe`` cannot take samples (it
  calls ``ctypes.c_float_p``, which does not exist), so the samples go to
  ``moonshine_transcribe`` directly. Its onnxruntime picks its own thread count.

Each manifest (JSONL: ``audio`` relative to the manifest's folder or absolute, ``text``) is read
as mono 16 kHz (``load_audio``: soundfile, soxr). References and hypotheses are normalised
alike (``normalize_transcript``: upper case, digits spelled, punctuation dropped) and scored as
``mamba-asr eval`` scores (``error_rates``: corpus WER and CER, jiwer). RTF: decoding seconds
over audio seconds, model loading not counted. Prints a Markdown table (set: the manifest's
folder name; ``--pooled`` adds a row per engine over all the manifests together) and writes it
with every hypothesis to ``--json`` (default benchmarks/results/peers.json).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import numpy as np

from mamba_asr.audio.io import load_audio
from mamba_asr.data.manifest import Utterance, read_manifest
from mamba_asr.files import check_output
from mamba_asr.text import error_rates, normalize_transcript

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


class Engine(Protocol):
    name: str
    version: str

    def transcribe(self, wave: np.ndarray) -> str:
        """Text of one utterance: float32 samples (T,) at 16 kHz."""
        ...


class PocketSphinx:
    """PocketSphinx with its bundled en-us model, dictionary and LM (``Decoder()`` defaults)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.version = version("pocketsphinx")
        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")

    def transcribe(self, wave: np.ndarray) -> str:
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")  # (T,) 16-bit PCM
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class Moonshine:
    """Moonshine base English from the ``moonshine-cpp`` wheel, through its C library."""

    name = "moonshine"

    def __init__(self) -> None:
        import moonshine_cpp

        self.version = version("moonshine-cpp")
        self.lib = moonshine_cpp.moonshine_lib
        # language "en" loads models/base-en from the package folder (no download)
        self.model = moonshine_cpp.MoonshineModel(language="en", model_type="base")

    def transcribe(self, wave: np.ndarray) -> str:
        samples = np.ascontiguousarray(wave, dtype=np.float32)  # (T,)
        text = ctypes.c_char_p()
        error = self.lib.moonshine_transcribe(
            self.model.model_handle,
            samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            samples.size,
            ctypes.byref(text),
        )
        if error != 0:
            raise RuntimeError(f"moonshine_transcribe failed with error {error}")
        result = (text.value or b"").decode("utf-8")
        self.lib.moonshine_free_text(text)
        return result


ENGINES: dict[str, type[PocketSphinx] | type[Moonshine]] = {
    "pocketsphinx": PocketSphinx,
    "moonshine": Moonshine,
}


def run_set(engine: Engine, utterances: list[Utterance], waves: list[np.ndarray]) -> dict:
    """WER, CER, RTF and hypotheses of one engine on one set."""
    hyps, seconds = [], 0.0
    for wave in waves:
        start = time.perf_counter()
        hyps.append(engine.transcribe(wave))
        seconds += time.perf_counter() - start
    refs = [normalize_transcript(u.text) for u in utterances]
    normalised = [normalize_transcript(h) for h in hyps]
    rates = error_rates(refs, normalised)
    audio_seconds = sum(w.size for w in waves) / RATE
    return {
        "utterances": len(utterances),
        "wer": rates.wer,
        "cer": rates.cer,
        "rtf": seconds / audio_seconds,
        "audio_s": audio_seconds,
        "decode_s": seconds,
        "hypotheses": [
            {"id": u.id, "ref": r, "hyp": h, "raw": raw}
            for u, r, h, raw in zip(utterances, refs, normalised, hyps, strict=True)
        ],
    }


def pool(name: str, rows: list[dict]) -> dict:
    """One row over several sets' rows of the same engine: corpus WER and CER, summed RTF."""
    hyps = [h for row in rows for h in row["hypotheses"]]
    rates = error_rates([h["ref"] for h in hyps], [h["hyp"] for h in hyps])
    audio_s, decode_s = sum(r["audio_s"] for r in rows), sum(r["decode_s"] for r in rows)
    return {"set": name, "manifest": [r["manifest"] for r in rows], "engine": rows[0]["engine"],
            "utterances": len(hyps), "wer": rates.wer, "cer": rates.cer,
            "rtf": decode_s / audio_s, "audio_s": audio_s, "decode_s": decode_s}  # fmt: skip


def print_row(row: dict, versions: dict[str, str]) -> None:
    engine = f"{row['engine']} {versions[row['engine']]}"
    print(f"| {row['set']} | {engine} | {row['utterances']} | {100 * row['wer']:.1f} "
          f"| {100 * row['cer']:.1f} | {row['rtf']:.3f} |", flush=True)  # fmt: skip


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]  # fmt: skip
    return f"{names[0] if names else platform.processor()}, {os.cpu_count()} CPUs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", nargs="+", type=Path, required=True, help="JSONL manifests")
    p.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=list(ENGINES))
    p.add_argument("--pooled", action="store_true", help="add a row over all the manifests")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/peers.json")
    args = p.parse_args()
    check_output(args.json, "--json", inputs=args.manifest, overwrite=True)
    engines = [ENGINES[name]() for name in args.engines]
    versions = {e.name: e.version for e in engines}
    report: dict = {"command": " ".join(sys.argv), "engines": versions, "machine": machine(),
                    "sets": []}  # fmt: skip
    print(" ".join(["python", *sys.argv]))
    print("\n| set | engine | utterances | WER % | CER % | RTF |\n|---|---|---:|---:|---:|---:|")
    for manifest in args.manifest:
        utterances = read_manifest(manifest)
        waves = [load_audio(u.audio, RATE) for u in utterances]
        for engine in engines:
            row = {"set": manifest.parent.name, "manifest": str(manifest), "engine": engine.name}
            row |= run_set(engine, utterances, waves)
            print_row(row, versions)
            report["sets"].append(row)
    if args.pooled:
        name = "+".join(m.parent.name for m in args.manifest)
        for engine in engines:
            row = pool(name, [r for r in report["sets"] if r["engine"] == engine.name])
            print_row(row, versions)
            report["sets"].append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    temp = args.json.with_name(args.json.name + ".tmp")
    temp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(temp, args.json)


if __name__ == "__main__":
    main()
