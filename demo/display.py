"""The demo's terminal output: a progress bar with a live line, and plain tables."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np


def bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def live_line(elapsed: float, duration: float, rps: float, latencies: Sequence[float], batch: float | None,
              agreement: float | None, canary_weight: float | None, shifted: bool) -> str:
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if len(latencies) else (float("nan"),) * 2
    parts = [f"{bar(elapsed / duration)} {elapsed:4.0f}/{duration:.0f}s",
             f"{rps:6.0f} req/s", f"p50 {p50:5.1f} ms", f"p99 {p99:6.1f} ms",
             f"batch {batch:4.1f}" if batch is not None else "batch  -  ",
             f"shadow agree {agreement:5.1%}" if agreement is not None else "shadow agree  -  ",
             f"canary {canary_weight:g}%" if canary_weight is not None else "canary -",
             "SHIFTED" if shifted else "       "]
    return "  ".join(parts)


class Live:
    """Rewrites one line in place on a terminal; prints a line now and then otherwise."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_plain = -1.0

    def update(self, line: str, elapsed: float) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r" + line[: width - 1].ljust(width - 1))
            self.stream.flush()
        elif elapsed - self._last_plain >= 5:
            self._last_plain = elapsed
            print(line, file=self.stream, flush=True)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
