"""The small model's latency at c=1, serve from REV against the working tree, in interleaved pairs.

    python benchmarks/latency_pairs.py --before fd343a2              # 12 pairs of 3 s (about 1.5 minutes)
    python benchmarks/latency_pairs.py --before fd343a2 --pairs 20 --seconds 5

Both serves run side by side from the start (the example repository, ``classifier``); each pair
measures one and then the other, alternating which goes first, with the benchmarks' closed-loop
client (sidecar_bench.py's ``measure``: one JSON row per request, µs resolution). Prints each
side's p50s, their medians, the median of the paired ratios (now / before: the figure that the
host's noise, which moves both sides of a pair alike, disturbs least) and the CPU steal time the
host took meanwhile (/proc/stat), so that a run on a busy host is told from a quiet one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from compute_bound import archive, small_body
from compute_points import start_serve
from sidecar_bench import measure as closed_loop

ROOT = Path(__file__).resolve().parent.parent


def steal_s() -> float:
    """Seconds of CPU the host took from this machine (all CPUs), from /proc/stat; NaN elsewhere."""
    try:
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / 100
    except (OSError, IndexError, ValueError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, metavar="REV", help="serve from a git archive of REV")
    parser.add_argument("--pairs", type=int, default=12, help="pairs of measurements (default 12)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default 3)")
    args = parser.parse_args()
    if args.pairs < 1 or args.seconds < 0.5:
        parser.error("--pairs at least 1, --seconds at least 0.5")
    workdir = Path(tempfile.mkdtemp(prefix="shadowserve-latency-pairs-"))
    serves = {}
    try:
        trees = {"before": archive(args.before, workdir, "before"), "now": ROOT}
        for label, tree in trees.items():
            serves[label] = start_serve(ROOT / "examples" / "models", workdir, name=f"serve-{label}", tree=tree,
                                        threads=0)
        body = small_body(workdir)
        p50s: dict[str, list[float]] = {label: [] for label in serves}
        ratios = []
        steal, started = steal_s(), time.monotonic()
        for pair in range(args.pairs):
            order = ["before", "now"] if pair % 2 == 0 else ["now", "before"]
            for label in order:
                port = int(serves[label].http.rsplit(":", 1)[1])
                p50s[label].append(closed_loop(port, body, 1, args.seconds, 0.3)["p50"])
            ratios.append(p50s["now"][-1] / p50s["before"][-1])
        wall, stolen = time.monotonic() - started, steal_s() - steal
    finally:
        for serve in serves.values():
            serve.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for label, values in p50s.items():
        print(f"{label}: p50 median {statistics.median(values):.3f} ms, min {min(values):.3f} "
              f"({', '.join(f'{v:.3f}' for v in values)})")
    print(f"paired now / before (median of {len(ratios)}): {statistics.median(ratios):.3f}")
    print(f"CPU steal: {stolen:.1f} s over {wall:.0f} s of wall time (both CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
