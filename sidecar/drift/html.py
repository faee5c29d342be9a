"""The HTML report: one self-contained file, inline SVG plots, summaries only (never raw data),
so its size depends on the number of columns, not on the number of records."""

from __future__ import annotations

import itertools
from html import escape
from pathlib import Path
from typing import Any

from sidecar.drift.paired import CompareReport, OutputComparison
from sidecar.drift.render import Report, status, table
from sidecar.drift.window import ColumnResult, WindowReport

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}
.bad{color:#b00;font-weight:600}.ok{color:#060}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figcaption{font-size:12px;max-width:420px}.ref{fill:#7a9cc6}.cur{fill:#e8964a}pre{background:#f6f6f6;padding:1em}
.line{fill:none;stroke:#e8964a;stroke-width:2}"""
WIDTH, HEIGHT = 420, 150


def _label(value: float) -> str:
    return f"{value:.3g}"


def _bin_labels(plot: dict[str, Any]) -> list[str]:
    if "labels" in plot:
        return [str(x) for x in plot["labels"]]
    edges = plot["edges"]
    labels = [f"<{_label(edges[0])}"] if edges else ["all"]
    labels += [f"{_label(a)}..{_label(b)}" for a, b in itertools.pairwise(edges)]
    if edges:
        labels.append(f">={_label(edges[-1])}")
    if plot.get("nonfinite"):
        labels.append("NaN/inf")
    return labels


def histogram_svg(plot: dict[str, Any]) -> str:
    """Bars of the reference's and the current window's shares per bin."""
    ref, cur = plot.get("reference", []), plot.get("current", [])
    if not ref:
        return ""
    ref_total, cur_total = max(sum(ref), 1), max(sum(cur), 1)
    shares = [(r / ref_total, c / cur_total) for r, c in zip(ref, cur, strict=False)]
    top = max(max(p) for p in shares) or 1.0
    slot = WIDTH / len(shares)
    bar = slot * 0.4
    parts = [f'<svg width="{WIDTH}" height="{HEIGHT + 30}" role="img">']
    for i, ((r, c), label) in enumerate(zip(shares, _bin_labels(plot), strict=False)):
        x = i * slot + slot * 0.1
        for share, cls, dx in ((r, "ref", 0.0), (c, "cur", bar)):
            h = share / top * HEIGHT
            parts.append(f'<rect class="{cls}" x="{x + dx:.1f}" y="{HEIGHT - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}"><title>{escape(label)}: {share:.3%}</title></rect>')
        if len(shares) <= 14:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT + 14}" font-size="9">{escape(label[:12])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(timeline: dict[str, Any]) -> str:
    """The agreement rate (or mean absolute difference) over time."""
    values = timeline.get("value", [])
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    points = " ".join(f"{i * WIDTH / (len(values) - 1):.1f},{HEIGHT - (v - low) / span * HEIGHT:.1f}"
                      for i, v in enumerate(values))
    return (f'<svg width="{WIDTH}" height="{HEIGHT + 20}" role="img"><polyline class="line" points="{points}"/>'
            f'<text x="0" y="{HEIGHT + 15}" font-size="10">{escape(timeline["metric"])} from {low:.4g} to '
            f'{high:.4g}</text></svg>')


def _column_figure(column: ColumnResult) -> str:
    verdict = f'<span class="{"bad" if column.drift else "ok"}">{"drift" if column.drift else "ok"}</span>'
    return (f"<figure>{histogram_svg(column.histogram)}<figcaption><b>{escape(column.name)}</b> {verdict}: "
            f"{escape(column.reason)}</figcaption></figure>")


def _window_body(report: WindowReport) -> str:
    figures = "".join(_column_figure(c) for c in report.columns)
    legend = '<p><svg width="12" height="12"><rect class="ref" width="12" height="12"/></svg> reference ' \
             '<svg width="12" height="12"><rect class="cur" width="12" height="12"/></svg> current</p>'
    return f"{legend}{figures}"


def _output_figure(output: OutputComparison) -> str:
    verdict = "disagreement" if output.disagreement else "agrees"
    reasons = "; ".join(output.reasons) or "within the thresholds"
    return (f'<figure>{timeline_svg(output.timeline)}<figcaption><b>{escape(output.name)}</b> '
            f'<span class="{"bad" if output.disagreement else "ok"}">{verdict}</span>: {escape(reasons)}'
            f"</figcaption></figure>")


def render_html(report: Report, title: str = "Drift report") -> str:
    """The whole report as one HTML page."""
    judged = ""
    if isinstance(report, CompareReport):
        if report.judged is not None:  # the version the evidence is for, under the verdict
            judged = f'<p class="judged">judged: <b>{escape(report.judged.describe())}</b></p>'
        body = ("<h2>Agreement over time</h2>" + "".join(_output_figure(o) for o in report.outputs)
                + f"<h2>Distribution of {escape(report.shadow)} against the primary</h2>"
                + _window_body(report.distribution))
    else:
        body = "<h2>Reference vs current</h2>" + _window_body(report)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}: {escape(status(report))}</h1>{judged}"
            f"<pre>{escape(table(report))}</pre>{body}</body></html>\n")


def write_html(report: Report, path: Path, title: str = "Drift report") -> None:
    path.write_text(render_html(report, title))
