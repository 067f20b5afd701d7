"""One row per compression step: dev WER, parameters, file size, real-time factor (docs/compression.md).

    python benchmarks/compression.py --models baseline=BASE.pt kd=KD.pt pruned25=P25.pt ...
        --dev seen=DEV/manifest.jsonl unseen=HELDOUT/manifest.jsonl [--fp16 baseline]
        [--strategy greedy] [--seconds 30] [--threads 1] [--repeats 3] [--json OUT]

For every model (``LABEL=PATH``; a model file or a bundled name): parameters, the model file's
size, WER on each ``--dev`` manifest (``mamba-asr eval``'s scoring, offline, ``--strategy``),
and the streaming real-time factor on one CPU thread at 320 ms chunks in PyTorch and in
onnxruntime fp32, int8 and int4 (the model exported with ``mamba-asr export onnx --int8
--int4`` into a temporary folder and timed by ``benchmarks/onnx_rtf.py``, greedy search,
``--seconds`` of examples/hello.flac repeated). ``--onnx-wer``: WER of the int8 and int4
graphs on each ``--dev`` too (offline, as ``mamba-asr eval --onnx``), and the size of each
export (one encoder graph, the predictor's and the joiner's: what a recognizer holds). ``--fp16 LABEL``: a row more for that model in fp16 (the file
written with half-precision weights, decoded under fp16 autocast; its PyTorch RTF on a CPU is
not what a GPU gives and is left out). Prints a Markdown table with the machine and the
command; writes ``--json`` (default benchmarks/results/compression.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            sys.exit(f"{what}: expected LABEL=VALUE, got {item!r}")
        out[label] = value
    return out


def dev_wers(asr, devs: dict[str, str], strategy: str, tmp: Path) -> dict[str, float]:
    from mamba_asr.decode import DecodingOptions
    from mamba_asr.evaluate import evaluate, load_test_set

    options = DecodingOptions(strategy=strategy)
    return {
        name: evaluate(asr, load_test_set(m), tmp / f"hyps_{name}.jsonl", options).wer
        for name, m in devs.items()
    }


def export(path: str, tmp: Path) -> Path:
    folder = tmp / "onnx"
    cmd = [sys.executable, "-m", "mamba_asr", "export", "onnx", path, "--out", str(folder),
           "--int8", "--int4"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return folder


def onnx_rows(folder: Path, args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """{int8, int4: {"mb": one encoder + predictor + joiner graph, "wer": {dev: WER}}}."""
    from mamba_asr.decode import DecodingOptions
    from mamba_asr.evaluate import evaluate, load_test_set
    from mamba_asr.runtime.onnx import OnnxASR

    out = {}
    for quant in ("int8", "int4"):
        names = [f"{g}.{quant}.onnx" for g in ("encoder", "predictor", "joiner")]
        asr = OnnxASR.load(folder, threads=args.threads, **{quant: True})
        options = DecodingOptions(strategy=args.strategy)
        out[quant] = {
            "mb": sum((folder / n).stat().st_size for n in names) / 1e6,
            "wer": {name: evaluate(asr, load_test_set(m), tmp / f"hyps_{quant}_{name}.jsonl",
                                   options).wer for name, m in args.dev.items()},
        }  # fmt: skip
    return out


def speeds(folder: Path, path: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """PyTorch, ONNX fp32, int8 and int4 streaming RTF (benchmarks/onnx_rtf.py)."""
    out = tmp / "rtf.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/onnx_rtf.py"), "--onnx", str(folder),
                    "--model", path, "--seconds", str(args.seconds), "--threads",
                    str(args.threads), "--repeats", str(args.repeats), "--decoding", "greedy",
                    "--json", str(out)], check=True, capture_output=True, text=True)  # fmt: skip
    return {r["engine"]: r["rtf"] for r in json.loads(out.read_text())["results"]}


def measure(label: str, path: str, args: argparse.Namespace, fp16: bool) -> dict:
    import torch

    from mamba_asr import load_model
    from mamba_asr.pretrained import resolve_model

    torch.set_num_threads(args.threads)
    file = resolve_model(path)
    with tempfile.TemporaryDirectory() as tmp:
        asr = load_model(path, device="cpu")
        row = {"label": label, "model": str(path),
               "params": sum(p.numel() for p in asr.model.parameters())}  # fmt: skip
        if fp16:
            half = Path(tmp) / "half.pt"
            asr.save(half, half=True)
            row["file_mb"] = half.stat().st_size / 1e6
            asr.set_precision("fp16")
        else:
            row["file_mb"] = Path(file).stat().st_size / 1e6
        row["wer"] = dev_wers(asr, args.dev, args.strategy, Path(tmp))
        row["rtf"], row["onnx"] = {}, {}
        if not fp16:
            folder = export(str(file), Path(tmp))
            row["rtf"] = speeds(folder, str(file), args, Path(tmp))
            if args.onnx_wer:
                row["onnx"] = onnx_rows(folder, args, Path(tmp))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, metavar="LABEL=PATH")
    p.add_argument("--dev", nargs="+", required=True, metavar="NAME=MANIFEST")
    p.add_argument("--fp16", nargs="*", default=[], metavar="LABEL")
    p.add_argument("--strategy", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--onnx-wer", action="store_true", help="WER and size of the int8/int4 graphs")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/compression.json")
    args = p.parse_args()
    models = parse_pairs(args.models, "--models")
    args.dev = parse_pairs(args.dev, "--dev")
    unknown = [x for x in args.fp16 if x not in models]
    if unknown:
        sys.exit(f"--fp16: no model labelled {unknown[0]!r} in --models")
    from tqdm import tqdm

    jobs = [(label, path, False) for label, path in models.items()]
    jobs += [(f"{label} fp16", models[label], True) for label in args.fp16]
    rows = [measure(label, path, args, fp16) for label, path, fp16 in tqdm(jobs, desc="models")]
    base = rows[0]
    print(f"python benchmarks/compression.py {' '.join(sys.argv[1:])}")
    print(f"# {os.cpu_count()} cores, {args.threads} thread(s), {args.strategy} search, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    devs = list(args.dev)
    engines = ("pytorch", "onnx fp32", "onnx int8", "onnx int4")
    print("| step | " + " | ".join(f"WER {d}" for d in devs) + " | params | file MB | "
          "size vs first | " + " | ".join(f"RTF {e}" for e in engines) + " |")  # fmt: skip
    print("|---" * (len(devs) + 8) + "|")
    for r in rows:
        rtf = [f"{r['rtf'][e]:.4f}" if e in r["rtf"] else "-" for e in engines]
        print(f"| {r['label']} | " + " | ".join(f"{100 * r['wer'][d]:.2f}" for d in devs)
              + f" | {r['params'] / 1e6:.2f} M | {r['file_mb']:.1f} | "
              f"{r['file_mb'] / base['file_mb']:.2f} | " + " | ".join(rtf) + " |")  # fmt: skip
        for quant, q in r["onnx"].items():
            print(f"| {r['label']}, ONNX {quant} | "
                  + " | ".join(f"{100 * q['wer'][d]:.2f}" for d in devs)
                  + f" | - | {q['mb']:.1f} | {q['mb'] / base['file_mb']:.2f} | "
                  + " | ".join("-" * len(engines)) + " |")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "strategy": args.strategy,
                                     "dev": args.dev, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
