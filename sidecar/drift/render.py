"""Reports for people and programs: the terminal table and the JSON document."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sidecar.drift.paired import CompareReport
from sidecar.drift.window import WindowReport

REPORT_FORMAT = "shadowserve.drift.report/1"
Report = WindowReport | CompareReport


def status(report: Report) -> str:
    """``pass``, ``drift``, ``disagreement`` or ``drift+disagreement``."""
    found = [name for name, flag in (("drift", report.drift),
                                     ("disagreement", getattr(report, "disagreement", False))) if flag]
    return "+".join(found) or "pass"


def to_document(report: Report) -> dict[str, Any]:
    """The JSON document of a report (its schema is in docs/drift.md)."""
    return {"format": REPORT_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": status(report), **report.to_json()}


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(to_document(report), indent=1, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 10 ** 6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits + 1}g}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def window_table(report: WindowReport) -> str:
    rows = []
    for c in report.columns:
        value = None
        if c.test is not None:
            statistic = c.statistics[c.test]
            value = statistic.p_value if c.test in ("ks", "chi2") else statistic.value
        rows.append([c.name, c.kind[:3], f"{c.reference.get('count', 0):,}", f"{c.current.get('count', 0):,}",
                     c.test or "-", _fmt(value), _fmt(c.threshold), "DRIFT" if c.drift else "ok"])
    table = _grid(["column", "kind", "reference", "current", "test", "value", "threshold", "verdict"], rows)
    drifted = [c for c in report.columns if c.drift]
    summary = (f"drift in {len(drifted)} of {len(report.columns)} columns: "
               + "; ".join(f"{c.name} ({c.reason})" for c in drifted[:10])) if drifted else \
        f"no drift in {len(report.columns)} columns"
    return f"{table}\n\n{summary}"


def compare_table(report: CompareReport) -> str:
    rows = []
    for o in report.outputs:
        st = o.statistics
        interval = o.disagreement_interval
        rows.append([o.name, f"{o.pairs:,}", _fmt(st["agreement"].value if "agreement" in st else None, 4),
                     f"{_fmt(interval[0])}..{_fmt(interval[1])}" if interval else "-",
                     _fmt(st["mad"].value if "mad" in st else None),
                     _fmt(st["spearman"].value if "spearman" in st else None),
                     _fmt(st["mcnemar"].p_value if "mcnemar" in st else None),
                     "DISAGREE" if o.disagreement else "ok"])
    header = ["output", "pairs", "agreement", "disagreement CI", "MAD", "Spearman", "McNemar p", "verdict"]
    counts = report.counts
    judged = f" ({report.judged.describe()})" if report.judged is not None else ""
    lines = [f"primary vs {report.shadow}{judged}: {counts.get('records', 0):,} records, "
             f"{counts.get('shadow_failed', 0):,} shadow failures, "
             f"{counts.get('paired_predictions', 0):,} paired predictions",
             "", _grid(header, rows)]
    for o in report.outputs:
        lines += [f"{o.name}: {reason}" for reason in o.reasons]
    lines += ["", f"distribution of {report.shadow} against the primary:", window_table(report.distribution)]
    return "\n".join(lines)


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on (ESC and the other controls, bidi
    overrides) written as its escape: tensor, model and shadow names come from the records."""
    return "\n".join("".join(c if c.isprintable() else ascii(c)[1:-1] for c in line) for line in text.split("\n"))


def table(report: Report) -> str:
    """The terminal rendering of a report, safe to print whatever the records named."""
    return terminal_safe(compare_table(report) if isinstance(report, CompareReport) else window_table(report))
