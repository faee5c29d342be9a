"""Benchmark of ``shadowserve-drift`` on 10 million records, next to Evidently.

    python benchmarks/drift_bench.py                   # 10M records: profile, report, compare
    python benchmarks/drift_bench.py --records 1000000 --evidently-sizes 10000
    python benchmarks/drift_bench.py --write           # also rewrite the drift section of RESULTS.md
    python benchmarks/drift_bench.py --proof           # the detection-rate table (200 repetitions)

Records are synthetic, in the recorder's schema: one request per record, a 10-class softmax
output from the primary and from a shadow ``v2`` (the same logits with a little noise), one
second apart; the first half is the reference window, the second half (class 0 slightly more
likely) the current one. Each command runs as a subprocess; wall time and peak resident memory
come from the operating system (``wait4``). Evidently runs in its own virtualenv
(benchmarks/.peers/evidently, git-ignored, made on first use) on pandas frames of the same data
(10 probability columns and the predicted class), at growing sizes until one takes longer than
``--evidently-timeout``; its values are compared with ours where the definitions coincide.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from sidecar.drift.synthetic import START, write_records

PEERS = HERE / ".peers"
EVIDENTLY = ("evidently==0.7.23", "pandas<3")  # evidently 0.7 imports a helper pandas 3 removed
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- drift:start -->", "<!-- drift:end -->"
SEGMENT = 500_000

EVIDENTLY_PROGRAM = r"""
import json, sys, time, numpy as np, pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
n, seed = int(sys.argv[1]), int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from drift_bench_data import frames
reference, current = frames(n, seed)
columns = [f"p{i}" for i in range(10)]
definition = DataDefinition(numerical_columns=columns, categorical_columns=["top1"])
start = time.perf_counter()
snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                           Dataset.from_pandas(reference, data_definition=definition))
elapsed = time.perf_counter() - start
values = {}
for metric in snapshot.dict()["metrics"]:
    name = metric["metric_name"]
    if name.startswith("ValueDrift("):
        column = name.split("column=")[1].split(",")[0]
        values[column] = {"method": name.split("method=")[1].split(",")[0], "value": metric["value"]}
print(json.dumps({"seconds": elapsed, "values": values}))
"""

DATA_MODULE = r'''
import numpy as np

def windows(n, seed):
    rng = np.random.default_rng(seed)
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    ref = rng.normal(size=(n, 10))
    cur = rng.normal(size=(n, 10))
    cur[:, 0] += 0.05
    return softmax(ref), softmax(cur)

def frames(n, seed):
    import pandas as pd
    out = []
    for probs in windows(n, seed):
        frame = pd.DataFrame(probs, columns=[f"p{i}" for i in range(10)])
        frame["top1"] = probs.argmax(axis=1)
        out.append(frame)
    return out
'''


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def generate(directory: Path, records: int) -> None:
    marker = directory / ".complete"
    if marker.exists() and marker.read_text() == str(records):
        return
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for number, begin in enumerate(range(0, records, SEGMENT)):
        n = min(SEGMENT, records - begin)
        logits = rng.normal(size=(n, 10))
        if begin >= records // 2:
            logits[:, 0] += 0.05  # the current window: class 0 slightly more likely
        shadow = logits + rng.normal(0, 0.3, size=(n, 10))
        write_records(directory, {"probs": softmax(logits).astype(np.float32)},
                      shadows={"v2": {"probs": softmax(shadow).astype(np.float32)}},
                      start=START + timedelta(seconds=begin), segment_rows=n, prefix=f"part{number:04d}")
        print(f"\rwrote {begin + n:,}/{records:,} records", end="", file=sys.stderr, flush=True)
    print(f"\nrecords written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    marker.write_text(str(records))


def measure(command: list[str], timeout: float = 3600) -> tuple[float, float, str]:
    """Run ``command``; return (wall seconds, peak resident MiB, stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=False)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise TimeoutError(" ".join(command))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{command} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return wall, usage.ru_maxrss / 1024, text


def ensure_evidently() -> Path | None:
    venv = PEERS / "evidently"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not (marker.is_file() and marker.read_text() == "\n".join(EVIDENTLY)):
        PEERS.mkdir(exist_ok=True)
        print("setting up Evidently in benchmarks/.peers/evidently", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *EVIDENTLY], check=True)
        except subprocess.CalledProcessError as error:
            print(f"Evidently unavailable: {error}", file=sys.stderr)
            return None
        marker.write_text("\n".join(EVIDENTLY))
    return python


class EvidentlyRun(TypedDict):
    """One Evidently run: rows per window, wall seconds, peak MiB, and the values it reported (its JSON)."""

    n: int
    wall: float
    peak: float
    values: dict[str, dict[str, Any]]


def run_evidently(python: Path, sizes: list[int], timeout: float) -> tuple[list[EvidentlyRun], str]:
    work = Path(tempfile.mkdtemp())
    (work / "drift_bench_data.py").write_text(DATA_MODULE)
    rows: list[EvidentlyRun] = []
    note = ""
    for n in sizes:
        try:
            wall, peak, out = measure([str(python), "-c", EVIDENTLY_PROGRAM, str(n), "0", str(work)], timeout)
        except (TimeoutError, RuntimeError) as error:
            why = "over the time limit" if isinstance(error, TimeoutError) else "failed"
            note = f"Evidently at {n:,} rows per window: {why}"
            break
        result = json.loads(out.strip().splitlines()[-1])
        rows.append({"n": n, "wall": wall, "peak": peak, "values": result["values"]})
    shutil.rmtree(work, ignore_errors=True)
    return rows, note


def agreement(work_n: int, evidently_values: dict[str, dict[str, Any]]) -> list[str]:
    """Our values on Evidently's data, side by side, where the definitions coincide."""
    namespace: dict[str, Any] = {}  # whatever exec() defines
    exec(DATA_MODULE, namespace)  # the very same generator
    ref, cur = namespace["windows"](work_n, 0)
    from sidecar.drift import window_drift
    report = window_drift({"p": ref}, {"p": cur})
    lines = ["| column | Evidently method | Evidently | ours (same definition) |", "|---|---|---:|---:|"]
    for column in report.columns:
        key = "top1" if column.name == "p.top1" else f"p{column.name[2:-1]}"
        theirs = evidently_values.get(key)
        if not theirs:
            continue
        method = str(theirs["method"])
        if method.startswith("Wasserstein"):
            ours = column.statistics["wasserstein"].value
        elif method.startswith("Jensen"):  # Evidently: natural log; ours: base 2
            ours = (column.statistics["js"].value or 0.0) * np.sqrt(np.log(2))
        elif method.startswith("K-S"):
            ours = column.statistics["ks"].p_value
        else:
            continue
        lines.append(f"| {key} | {method} | {float(theirs['value']):.6g} | {float(ours or 0):.6g} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--data", type=Path, default=PEERS / "drift-data", help="where the records go (reused)")
    parser.add_argument("--evidently-sizes", default="1000,10000,100000,1000000,5000000")
    parser.add_argument("--evidently-timeout", type=float, default=600)
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--write", action="store_true", help="rewrite the drift section of RESULTS.md")
    parser.add_argument("--proof", action="store_true", help="print the detection-rate table and stop")
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        generate(args.data, args.records)
        return 0
    if args.proof:
        from sidecar.drift.proof import markdown, run
        print(markdown(run(repetitions=args.repetitions)))
        return 0
    # in a child, so that this process stays small: children start from its peak memory
    subprocess.run([sys.executable, __file__, "--generate-only", "--records", str(args.records),
                    "--data", str(args.data)], check=True)
    half = (START + timedelta(seconds=args.records // 2)).isoformat()
    work = Path(tempfile.mkdtemp())
    drift = [sys.executable, "-m", "sidecar.drift"]
    steps = [
        ("profile (reference half)", [*drift, "profile", "--records", str(args.data), "--until", half,
                                      "--out", str(work / "ref.json")], args.records // 2),
        ("report vs saved profile", [*drift, "report", "--reference", str(work / "ref.json"), "--current",
                                     str(args.data), "--since", half, "--html", str(work / "r.html")],
         args.records - args.records // 2),
        ("report, both windows from records", [*drift, "report", "--reference", str(args.data), "--reference-until",
                                               half, "--current", str(args.data), "--since", half], args.records),
        ("compare primary vs v2", [*drift, "compare", "--records", str(args.data), "--shadow", "v2",
                                   "--html", str(work / "c.html")], args.records),
    ]
    lines = [f"Records: {args.records:,} (10-class softmax output, primary and one shadow), "
             f"{sum(f.stat().st_size for f in args.data.glob('*.parquet')) / 2**20:,.0f} MiB of Parquet; "
             f"{os.cpu_count()} CPU cores.", "",
             "| command | records read | wall time | peak memory | records/s |", "|---|---:|---:|---:|---:|"]
    for label, command, count in steps:
        wall, peak, _ = measure(command)
        lines.append(f"| `{label}` | {count:,} | {wall:.1f} s | {peak:,.0f} MiB | {count / wall:,.0f} |")
        print(lines[-1], file=sys.stderr)
    sizes = {name: (work / name).stat().st_size for name in ("ref.json", "r.html", "c.html")}
    lines += ["", f"Profile file: {sizes['ref.json'] / 1024:.0f} KiB; HTML reports: {sizes['r.html'] / 1024:.0f} KiB "
              f"(report) and {sizes['c.html'] / 1024:.0f} KiB (compare)."]
    shutil.rmtree(work, ignore_errors=True)
    python = None if args.no_evidently else ensure_evidently()
    if python:
        rows, note = run_evidently(python, [int(s) for s in args.evidently_sizes.split(",")], args.evidently_timeout)
        lines += ["", "Evidently 0.7 `DataDriftPreset` on the same kind of data (pandas, 11 columns, "
                  "reference and current of n rows each; time and memory of the whole process, imports "
                  "and data generation included; sizes from --evidently-sizes):",
                  "", "| rows per window | wall time | peak memory | rows/s |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['n']:,} | {r['wall']:.1f} s | {r['peak']:,.0f} MiB | "
                  f"{2 * int(r['n']) / float(r['wall']):,.0f} |" for r in rows]
        if note:
            lines += ["", note + f" ({args.evidently_timeout:.0f} s)."]
        for row in rows[:2]:
            lines += ["", f"Values on the same {row['n']:,} + {row['n']:,} rows "
                      "(Evidently picks its test by size):", ""]
            lines += agreement(int(row["n"]), row["values"])
    else:
        lines += ["", "Evidently: not measured."]
    section = "\n".join(lines)
    print(section)
    if args.write:
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        block = f"{BEGIN}\n## Drift (`benchmarks/drift_bench.py`)\n\n{section}\n{END}"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
