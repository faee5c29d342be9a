"""The report's plots as inline SVG: distributions on a value axis (reference filled, current
drawn over it), class shares as labelled bars, and a metric over time on a clock axis.

Each plot is a few paths and a handful of tick labels, about a kilobyte whatever the data, so a
report of a hundred columns stays small. Every text is escaped by the caller's `esc`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

Namer = Callable[[str], str | None]  # a class label to its name, or None
W, H, LEFT, BOTTOM = 300, 96, 4, 18  # a distribution plot: drawing area, room for the value axis
CLASS_ROWS, CLASS_LABEL = 10, 15  # class bars drawn, and characters of a class name shown
TW, TH, TLEFT = 640, 120, 44  # the timeline


SHOWN_CHARS = 300  # of any one string from the data: a tensor named with a megabyte stays a line


def esc(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` as HTML text or attribute value, cut to ``limit`` characters."""
    shown = str(text)
    if len(shown) > limit:
        shown = shown[:limit - 1] + "\u2026"
    return escape(shown, quote=True)


def number(value: float) -> str:
    """A tick or cell value in at most four significant digits, without exponent where it reads."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) spanning about ``count`` ticks."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs((high - low) / s - (count - 1)))
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def _steps(xs: Sequence[float], heights: Sequence[float]) -> str:
    """A closed step outline over consecutive bins [xs[i], xs[i+1]) of the given heights."""
    parts = [f"M{xs[0]:.0f} {H}"]
    for i, h in enumerate(heights):
        parts.append(f"V{H - h:.0f}H{xs[i + 1]:.0f}")
    parts.append(f"V{H}")
    return "".join(parts)


def _range(plot: dict[str, Any], low: float | None, high: float | None) -> tuple[float, float] | None:
    """The value range drawn: the inner edges, widened to the data's ends, at most by half their span."""
    edges = plot.get("edges") or []
    if len(edges) < 2 or edges[-1] <= edges[0]:
        return None
    span = edges[-1] - edges[0]
    lo = edges[0] - span / 2 if low is None else max(min(low, edges[0]), edges[0] - span / 2)
    hi = edges[-1] + span / 2 if high is None else min(max(high, edges[-1]), edges[-1] + span / 2)
    if lo == edges[0]:
        lo -= span / 20
    if hi == edges[-1]:
        hi += span / 20
    return lo, hi


def distribution_svg(plot: dict[str, Any], low: float | None = None, high: float | None = None) -> str:
    """Reference (filled) and current (line) densities over the reference's bins, on a value
    axis from ``low`` to ``high`` (the windows' smallest and largest values, when known)."""
    ref, cur = list(plot.get("reference", [])), list(plot.get("current", []))
    drawn = _range(plot, low, high)
    if not ref or drawn is None:
        return _bars_by_bin(plot)
    lo, hi = drawn
    edges = plot["edges"]
    nonfinite = (ref.pop(), cur.pop()) if plot.get("nonfinite") else None
    bounds = [lo, *edges, hi]
    x = [LEFT + (b - lo) / (hi - lo) * (W - 2 * LEFT) for b in bounds]
    widths = [max(b - a, 1e-300) for a, b in itertools.pairwise(bounds)]
    densities = []
    for k, counts in enumerate((ref, cur)):
        total = max(sum(counts) + (0 if nonfinite is None else nonfinite[k]), 1)  # shares of all values
        densities.append([c / total / w for c, w in zip(counts, widths, strict=False)])
    top = max(max(d) for d in densities) or 1.0
    ref_h, cur_h = ([d / top * (H - 4) for d in ds] for ds in densities)
    ticks = nice_ticks(lo, hi, 5)
    at = [LEFT + (t - lo) / (hi - lo) * (W - 2 * LEFT) for t in ticks]
    marks = "".join(f"M{a:.0f} {H}v4" for a in at)
    labels = "".join(f'<text x="{a:.0f}" y="{H + 15}">{esc(number(t))}</text>' for a, t in zip(at, ticks, strict=True))
    note = ""
    if nonfinite is not None:
        shares = [n / max(sum(c) + n, 1) for n, c in zip(nonfinite, (ref, cur), strict=True)]
        note = f'<p class="note">NaN/inf: {shares[0]:.1%} of the reference, {shares[1]:.1%} now</p>'
    return (f'<svg class="dist" viewBox="0 0 {W} {H + BOTTOM}" width="{W}" height="{H + BOTTOM}" role="img">'
            f'<path class="ref" d="{_steps(x, ref_h)}"/><path class="cur" d="{_steps(x, cur_h)}"/>'
            f'<path class="axis" d="M0 {H}H{W}{marks}"/>{labels}</svg>{note}')


def _bars_by_bin(plot: dict[str, Any]) -> str:
    """A constant (or almost constant) reference: shares per bin, named by their ranges."""
    edges = plot.get("edges") or []
    names = [f"< {number(edges[0])}"] if edges else ["all"]
    names += [f"{number(a)} to {number(b)}" for a, b in itertools.pairwise(edges)]
    if edges:
        names.append(f">= {number(edges[-1])}")
    if plot.get("nonfinite"):
        names.append("NaN/inf")
    return class_bars({**plot, "labels": names}, lambda label: None)


def class_bars(plot: dict[str, Any], namer: Namer) -> str:
    """Horizontal bars of each class's share, reference (thin, filled) and current (line),
    for the most frequent classes; the class's name when it has one."""
    labels = [str(label) for label in plot.get("labels", [])]
    ref, cur = plot.get("reference", []), plot.get("current", [])
    if not labels:
        return ""
    ref_total, cur_total = max(sum(ref), 1), max(sum(cur), 1)
    shares = [(r / ref_total, c / cur_total) for r, c in zip(ref, cur, strict=False)]
    order = sorted(range(len(shares)), key=lambda i: -(shares[i][0] + shares[i][1]))[:CLASS_ROWS]
    order.sort()
    top = max(max(shares[i]) for i in order) or 1.0
    row, start, width = 14, 100, W - 100 - 62
    texts, ref_path, cur_path = [], [], []
    for n, i in enumerate(order):
        y = n * row
        name = namer(labels[i]) or labels[i]
        shown = name if len(name) <= CLASS_LABEL else name[:CLASS_LABEL - 1] + "\u2026"
        tip = f"<title>{esc(name)}</title>" if shown != name else ""
        texts.append(f'<text x="{start - 4}" y="{y + 10}" class="k">{tip}{esc(shown)}</text>'
                     f'<text x="{start + width + 4}" y="{y + 10}">{shares[i][0]:.0%}\u2192{shares[i][1]:.0%}</text>')
        r, c = shares[i][0] / top * width, shares[i][1] / top * width
        ref_path.append(f"M{start} {y + 2}h{r:.0f}v5h{-r:.0f}z")
        cur_path.append(f"M{start} {y + 8}h{c:.0f}v4h{-c:.0f}z")
    more = len(shares) - len(order)
    height = len(order) * row + (14 if more else 2)
    extra = f'<text x="{start}" y="{height - 2}">and {more} more classes</text>' if more else ""
    return (f'<svg class="bars" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img">'
            f'<path class="ref" d="{"".join(ref_path)}"/><path class="curfill" d="{"".join(cur_path)}"/>'
            f'{"".join(texts)}{extra}</svg>')


_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
          172800, 604800)


def _clock(seconds: float, step: int) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    if step >= 86400:
        return moment.strftime("%m-%d")
    return moment.strftime("%H:%M:%S" if step < 60 else "%H:%M")


def timeline_svg(timeline: dict[str, Any], limit: float | None = None) -> str:
    """The agreement rate (or mean absolute difference) per time bucket, on a UTC clock axis;
    ``limit`` draws the threshold line (the lowest agreement allowed)."""
    starts, values = timeline.get("start_us", []), timeline.get("value", [])
    if len(values) < 2:
        return ""
    agreement = timeline.get("metric") == "agreement"
    t0, t1 = starts[0] / 1e6, starts[-1] / 1e6
    clock = starts[-1] > 10**12  # record times, microseconds since the epoch; else row numbers
    low = min([*values, *([limit] if limit is not None else [])])
    high = max(values)
    if agreement:
        low, high = max(0.0, min(low, 1.0) - 0.02), 1.0
    else:
        low, high = 0.0, high * 1.1 or 1.0
    width, plot_h = TW - TLEFT - 8, TH

    def px(t: float) -> float:
        return TLEFT + (t - t0) / ((t1 - t0) or 1) * width

    def py(v: float) -> float:
        return plot_h - (v - low) / ((high - low) or 1) * (plot_h - 6)

    points = " ".join(f"{px(s / 1e6):.0f},{py(v):.0f}" for s, v in zip(starts, values, strict=False))
    parts = [f'<svg class="time" viewBox="0 0 {TW} {TH + 34}" width="{TW}" height="{TH + 34}" role="img">']
    for v in nice_ticks(low, high, 4):
        parts.append(f'<path class="grid" d="M{TLEFT} {py(v):.0f}H{TW - 8}"/><text x="{TLEFT - 4}" '
                     f'y="{py(v) + 4:.0f}" class="k">{esc(f"{v:.0%}" if agreement else number(v))}</text>')
    if clock:
        step = next((s for s in _STEPS if (t1 - t0) / s <= 6), _STEPS[-1])
        tick = math.ceil(t0 / step) * step
        while tick <= t1:
            parts.append(f'<text x="{px(tick):.0f}" y="{plot_h + 16}">{esc(_clock(tick, step))}</text>'
                         f'<path class="axis" d="M{px(tick):.0f} {plot_h}v4"/>')
            tick += step
        day = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d")
        caption = f"time (UTC), from {day} {_clock(t0, 1)}"
    else:
        caption = f"prediction rows {int(starts[0]):,} to {int(starts[-1]):,}"
    if limit is not None:
        parts.append(f'<path class="limit" d="M{TLEFT} {py(limit):.0f}H{TW - 8}"/>')
    parts.append(f'<path class="axis" d="M{TLEFT} {plot_h}H{TW - 8}"/><polyline class="line" points="{points}"/>'
                 f'<text x="{TLEFT}" y="{plot_h + 31}" class="s">{esc(caption)}</text></svg>')
    return "".join(parts)
