"""Installed size of the torch-free recognizer's dependencies (those of mamba-asr-onnx:
``mamba-asr[onnx]`` without torch), for several onnxruntime and numpy versions, and whether the
ONNX runtime works with each set.

    python benchmarks/install_size.py [--onnxruntime 1.24.4 1.25.1 1.32.0] [--numpy 2.0.2 2.4.6]
        [--base soundfile==0.14.0 soxr==1.1.0 sentencepiece==0.2.3 num2words==0.5.14] [--spec "REQ REQ ..." ...]
        [--check /tmp/mct-onnx [/tmp/mct-onnx-int4]] [--audio examples/hello.flac] [--json PATH]

Each set (every ``--onnxruntime`` with every ``--numpy``, plus ``--base``; or each ``--spec``
as it is) goes into a fresh venv made without pip (``venv --without-pip``; this interpreter's
pip, 22.3 or later, installs into it with ``--python``), so its site-packages holds only the
set and what it pulls in. Sizes are disk usage as ``du`` counts it (allocated blocks, bytecode included), in
MB of 10^6 bytes: the whole site-packages, and each distribution's files from its RECORD.
Files of 5 MB or more are listed.

With ``--check DIR [DIR]`` (folders written by ``mamba-asr export onnx [--int8] [--int4]``), this
repository is then installed into each venv without its dependencies, and ``--audio`` is
transcribed (beam search with the export's LM, offline) from the fp32 graphs and from the
int8 and int4 ones where an export has them, in a subprocess where torch cannot be imported,
as tests/export/test_onnx.py's ``test_the_onnx_recognizer_runs_without_torch`` does. The
sizes are measured before that install.

Prints a Markdown table; writes benchmarks/results/install_size.json (or ``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the rest of mamba-asr-onnx's dependencies (packages/mamba-asr-onnx/pyproject.toml): those of
# the [onnx] extra, and num2words, which mamba_asr.text.normalize imports (from mamba-asr's own)
BASE = ["soundfile==0.14.0", "soxr==1.1.0", "sentencepiece==0.2.3", "num2words==0.5.14"]
BIG = 5_000_000  # files of this many bytes or more are listed
MB = 1e6

CHECK = """
import sys, time
sys.modules["torch"] = None  # any import of torch now fails
from mamba_asr.runtime.onnx import OnnxASR
quant = sys.argv[3]
asr = OnnxASR.load(sys.argv[1], int8=quant == "int8", int4=quant == "int4")
start = time.perf_counter()
text = asr.transcribe_file(sys.argv[2]).text
print(f"{time.perf_counter() - start:.3f}")
print(text)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m])
"""


def disk_usage(path: Path, seen: set[tuple[int, int]]) -> int:
    """Allocated bytes of a file, as du counts them (a hard link once)."""
    st = path.lstat()
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return 0
    seen.add(key)
    return st.st_blocks * 512


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def measure(site: Path) -> dict:
    """Disk usage of ``site`` in all, per distribution (its RECORD's files and its
    .dist-info), of files no RECORD lists, and the big files."""
    seen: set[tuple[int, int]] = set()
    claimed: set[Path] = set()
    dists = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = (info / "METADATA").read_text(errors="replace").splitlines()
        field = {k: v.strip() for k, _, v in (line.partition(":") for line in meta[:20])}
        files = {info / f.name for f in info.iterdir()}
        record = info / "RECORD"
        for line in record.read_text().splitlines() if record.exists() else []:
            name = line.rsplit(",", 2)[0]
            if name:
                files.add((site / name).resolve())
        used = sum(disk_usage(f, seen) for f in files if f.is_file())
        claimed |= files
        dists[field.get("Name", info.name)] = {
            "version": field.get("Version"),
            "mb": round(used / MB, 2),
        }
    total, rest, big = 0, 0, []
    seen_all: set[tuple[int, int]] = set()
    for dirpath, _, names in os.walk(site):
        for name in names:
            f = Path(dirpath, name)
            used = disk_usage(f, seen_all)
            total += used
            if f.resolve() not in claimed:
                rest += used
            if f.lstat().st_size >= BIG:
                big.append((str(f.relative_to(site)), round(f.lstat().st_size / MB, 1)))
    return {
        "total_mb": round(total / MB, 2),
        "distributions": dict(sorted(dists.items(), key=lambda kv: -kv[1]["mb"])),
        "not_in_a_record_mb": round(rest / MB, 2),
        "big_files": sorted(big, key=lambda b: -b[1]),
    }


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "-q"]
    cmd += ["--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def check(venv: Path, exports: list[Path], audio: Path) -> dict:
    """Transcribe ``audio`` from each graph set (fp32, int8, int4) in ``venv`` without torch,
    each from the first of ``exports`` that has it."""
    out = {}
    for quant in ("fp32", "int8", "int4"):
        name = "encoder.onnx" if quant == "fp32" else f"encoder.{quant}.onnx"
        export = next((e for e in exports if (e / name).exists()), None)
        if export is None:
            continue
        run = subprocess.run(
            [str(venv / "bin" / "python"), "-c", CHECK, str(export), str(audio), quant],
            capture_output=True, text=True, check=False, cwd=venv,
        )  # fmt: skip
        if run.returncode == 0:
            seconds, text = run.stdout.split("\n", 1)
            out[quant] = {"ok": True, "seconds": float(seconds), "text": text.strip()}
        else:
            lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
            out[quant] = {"ok": False, "error": lines[-1][-1000:] if lines else "no output"}
    return out


def install_set(spec: list[str], work: Path, wheel: Path | None, args) -> dict:
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=work))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    start = time.perf_counter()
    run = pip(venv, "install", "--prefer-binary", *spec)
    row: dict = {"spec": spec, "install_seconds": round(time.perf_counter() - start, 1)}
    if run.returncode != 0:
        lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
        row["error"] = lines[-1] if lines else "pip failed"
        return row
    row.update(measure(site_packages(venv)))
    if wheel is not None:
        run = pip(venv, "install", "--no-deps", str(wheel))
        if run.returncode != 0:
            row["check"] = {"error": run.stderr.strip().splitlines()[-1]}
        else:
            row["check"] = check(venv, args.check, args.audio)
    return row


def version(row: dict, name: str) -> str:
    return row.get("distributions", {}).get(name, {}).get("version") or "-"


def table(rows: list[dict]) -> str:
    head = "| onnxruntime | numpy | site-packages | onnxruntime | numpy | sympy+mpmath | rest |"
    checked = any("check" in r for r in rows)
    if checked:
        head += " fp32 | int8 | int4 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {' '.join(r['spec'])} | install failed: {r['error']} |")
            continue
        d = r["distributions"]
        mb = {k: v["mb"] for k, v in d.items()}
        ort, np_ = mb.get("onnxruntime", 0), mb.get("numpy", 0)
        sym = mb.get("sympy", 0) + mb.get("mpmath", 0)
        rest = r["total_mb"] - ort - np_ - sym
        cells = [version(r, "onnxruntime"), version(r, "numpy"), f"**{r['total_mb']:.1f}**"]
        cells += [f"{ort:.1f}", f"{np_:.1f}", f"{sym:.1f}" if sym else "-", f"{rest:.1f}"]
        if checked:
            c = r.get("check", {})
            for q in ("fp32", "int8", "int4"):
                cells.append("-" if q not in c else "ok" if c[q]["ok"] else "fails")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnxruntime", nargs="+", default=["1.24.4", "1.25.1", "1.32.0"])
    p.add_argument("--numpy", nargs="+", default=["2.0.2", "2.4.6"])
    p.add_argument("--base", nargs="*", default=BASE, help="installed with every set")
    p.add_argument(
        "--spec", action="append", default=[], metavar='"REQ REQ ..."',
        help="a set of requirements as it is (repeatable; replaces the grid of versions)",
    )  # fmt: skip
    p.add_argument(
        "--check", type=Path, nargs="+", metavar="DIR",
        help="ONNX exports (fp32 with int8 and/or int4 graphs) to transcribe from with each set",
    )  # fmt: skip
    p.add_argument("--audio", type=Path, default=ROOT / "examples" / "hello.flac")
    p.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "install_size.json"
    )
    p.add_argument("--keep", type=Path, help="make the venvs here and keep them")
    args = p.parse_args()
    if args.check is not None:
        args.check, args.audio = [d.resolve() for d in args.check], args.audio.resolve()

    if args.spec:
        specs = [s.split() for s in args.spec]
    else:
        grid = itertools.product(args.onnxruntime, args.numpy)
        specs = [[f"onnxruntime=={o}", f"numpy=={n}", *args.base] for o, n in grid]

    with tempfile.TemporaryDirectory(prefix="install-size-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wheel = None
        if args.check is not None:  # this repository as a wheel, installed without its deps
            dist = Path(tmp) / "dist"
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
                check=True,
            )  # fmt: skip
            wheel = next(dist.glob("*.whl"))
        rows = []
        for spec in specs:
            print(" ".join(spec), file=sys.stderr, flush=True)
            rows.append(install_set(spec, work, wheel, args))

    print(
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; MB = 10^6 bytes"
    )
    print(table(rows))
    for r in rows:
        if r.get("big_files"):
            big = ", ".join(f"{name} {mb}" for name, mb in r["big_files"])
            print(f"\n{' '.join(r['spec'])}: files >= 5 MB: {big}")
        for q, c in r.get("check", {}).items():
            if isinstance(c, dict) and not c.get("ok", True):
                print(f"  {q}: {c['error'][-300:]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    info = {"python": platform.python_version(), "platform": platform.platform()}
    args.json.write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
