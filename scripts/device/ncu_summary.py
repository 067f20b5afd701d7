"""A short text summary of Nsight Compute's exports (scripts/device/scan_profile.sh writes them):
per kernel launch its time, instructions, issue rate, occupancy, memory throughput and the
reasons its warps stalled; then the instructions where the most stall samples fell.

    python scripts/device/ncu_summary.py DIR [NAME ...]      (NAME: ours, peer; DIR/NAME_raw.csv
                                                             and DIR/NAME_source.csv)

Runs anywhere (no GPU): it only reads the CSV files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

METRICS = (  # (label, raw metric)
    ("time ms", "gpu__time_duration.sum"),
    ("warp instructions M", "smsp__inst_executed.sum"),
    ("issue slots busy %", "smsp__issue_active.avg.pct_of_peak_sustained_active"),
    ("IPC", "sm__inst_executed.avg.per_cycle_active"),
    ("registers", "launch__registers_per_thread"),
    ("warps active %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("L2 throughput %", "lts__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM read MB", "dram__bytes_read.sum"),
    ("DRAM write MB", "dram__bytes_write.sum"),
)
STALL = "smsp__average_warps_issue_stalled_"


def _table(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    rows = list(csv.reader(path.open()))
    head = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    return rows[head], rows[head + 1], [r for r in rows[head + 2 :] if r]


def _number(text: str) -> float:
    return float(text.replace(",", "")) if text else 0.0


def launches(path: Path) -> None:
    names, units, rows = _table(path)
    kernel = names.index("Kernel Name")
    print("| kernel | " + " | ".join(label for label, _ in METRICS) + " | top stall reasons |")
    print("|---|" + "---|" * (len(METRICS) + 1))
    for r in rows:
        cells = []
        for _, metric in METRICS:
            if metric not in names:
                cells.append("-")
                continue
            v = _number(r[names.index(metric)])
            unit = units[names.index(metric)]
            v = v * 1e-6 if metric == "smsp__inst_executed.sum" else v
            v = v / 1e3 if unit == "usecond" else v
            v = v * 1e3 if unit == "Gbyte" else v
            cells.append(f"{v:.3g}")
        stalls = sorted(
            ((_number(r[i]), n[len(STALL) : -len("_per_issue_active.ratio")])
             for i, n in enumerate(names)
             if n.startswith(STALL) and n.endswith("_per_issue_active.ratio")),
            reverse=True,
        )[:4]  # fmt: skip
        tops = ", ".join(f"{n} {v:.2f}" for v, n in stalls)
        print(f"| {r[kernel][:48]} | " + " | ".join(cells) + f" | {tops} |")


def hot_instructions(path: Path, top: int = 8) -> None:
    kernels, cur = [], None
    for r in csv.reader(path.open()):
        if r and r[0] == "Kernel Name":
            cur = {"name": r[1], "rows": []}
            kernels.append(cur)
        elif r and r[0] == "Address":
            cur["head"] = r
        elif r and cur is not None:
            cur["rows"].append(r)
    seen = set()
    for k in kernels:
        if k["name"] in seen:
            continue  # the same kernel launched again
        seen.add(k["name"])
        head = k["head"]
        samples = head.index("Warp Stall Sampling (All Samples)")
        reasons = [i for i, n in enumerate(head) if n.startswith("stall_") and "(" not in n]
        total = sum(_number(r[samples]) for r in k["rows"]) or 1.0
        print(f"\n{k['name'][:60]}: the {top} instructions with the most stall samples")
        for r in sorted(k["rows"], key=lambda r: -_number(r[samples]))[:top]:
            why = max(reasons, key=lambda i: _number(r[i]))
            print(f"  {_number(r[samples]) / total:6.1%}  {head[why]:<16} {r[1].strip()[:60]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("names", nargs="*", default=["ours", "peer"])
    args = p.parse_args(argv)
    for name in args.names:
        raw, source = args.dir / f"{name}_raw.csv", args.dir / f"{name}_source.csv"
        if raw.exists():
            print(f"## {name}")
            launches(raw)
        if source.exists():
            hot_instructions(source)
        print()


if __name__ == "__main__":
    main()
