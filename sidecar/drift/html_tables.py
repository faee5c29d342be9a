"""The report's header and tables, as HTML: the summary a person reads first (verdict,
windows, counts, thresholds), the per-column and per-output tables, the confusion matrix and
the pairs that disagree most. Every string from the data goes through `esc`."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from sidecar.drift.html_svg import SHOWN_CHARS, esc, number
from sidecar.drift.paired import CompareReport, OutputComparison
from sidecar.drift.report_classes import ClassNames
from sidecar.drift.thresholds import DriftSettings
from sidecar.drift.window import P_VALUE_TESTS, ColumnResult, WindowReport

LEAD_NAMES = 5  # drifted columns named in the verdict line; the table lists them all
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def cell(value: float | None) -> str:
    return "\u2013" if value is None else esc(number(value))


def column_name(name: str, kind: str, names: ClassNames) -> str:
    """The class name a score column holds, with the column's own name beside it."""
    named = names.column(name, kind)
    return f"<b>{esc(named)}</b> <code>{esc(name)}</code>" if named else f"<code>{esc(name)}</code>"


def plain_name(name: str, kind: str, names: ClassNames) -> str:
    named = names.column(name, kind)
    return f"{named} ({name})" if named else name


def _when(iso: Any) -> str:
    return str(iso).replace("T", " ").rstrip("Z").split(".")[0] if iso else ""


def _span(info: dict[str, Any]) -> str:
    first, last = _when(info.get("first")), _when(info.get("last"))
    if not first:
        return ""
    if last[:10] == first[:10]:
        last = last[11:]
    return f"{first} to {last} UTC"


def window_fact(info: dict[str, Any], values: int = 0) -> str:
    """One window in a line: records, time span, whose answers, where they came from (the last
    part of the path only: a report travels, the machine's directories need not); a window of
    arrays, which has no records, by its ``values`` per column."""
    if "records" not in info:
        return f"<b>{values:,}</b> values per column"
    parts = [f"<b>{int(info.get('records') or 0):,}</b> records"]
    span = _span(info)
    if span:
        parts.append(esc(span))
    if info.get("failed"):
        parts.append(f"{int(info['failed']):,} failed")
    if info.get("upstream") and info["upstream"] != "primary":
        parts.append(f"answers of <b>{esc(info['upstream'])}</b>")
    if info.get("path"):
        parts.append(f"<code>{esc(PurePath(str(info['path'])).name)}</code>")
    return " \u00b7 ".join(parts)


def _facts(rows: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in rows) + "</dl>"


def _alpha(report: WindowReport) -> str:
    corrected = next((c.threshold for c in report.columns if c.test in P_VALUE_TESTS and c.threshold), None)
    s = report.settings
    alpha = f"\u03b1 {number(s.alpha)}"
    if corrected is not None and corrected != s.alpha:
        alpha += f" ({esc(s.correction)}: {number(corrected)} per column)"
    return alpha


def window_thresholds(report: WindowReport) -> str:
    s = report.settings
    tests = "KS / \u03c7\u00b2 p-value" if (s.numeric_test, s.categorical_test) == ("auto", "auto") else \
        f"{esc(s.numeric_test)} / {esc(s.categorical_test)}"
    distances = ", ".join(f"{esc(k)} \u2265 {number(v)}" for k, v in s.thresholds.items())
    return (f"{tests} up to {s.small_sample:,} values at {_alpha(report)}; above: {distances}; "
            f"NaN/inf share may rise by {number(s.max_nonfinite_increase)}")


def compare_thresholds(settings: DriftSettings) -> str:
    s = settings
    return (f"top-1 disagreement \u2264 {number(s.max_disagreement)} ({s.confidence:.0%} Wilson interval); "
            f"single values: MAD \u2264 {number(s.max_mad)} std, Spearman \u2265 {number(s.min_spearman)}; "
            f"McNemar \u03b1 {number(s.alpha)}")


def window_lead(report: WindowReport, names: ClassNames) -> str:
    drifted = [c for c in report.columns if c.drift]
    if not drifted:
        return f"No drift in {len(report.columns)} columns."
    listed = ", ".join(plain_name(c.name, c.kind, names) for c in drifted[:LEAD_NAMES])
    more = f" and {len(drifted) - LEAD_NAMES} more" if len(drifted) > LEAD_NAMES else ""
    return f"Drift in {len(drifted)} of {len(report.columns)} columns: {listed}{more}."


def window_header(report: WindowReport, names: ClassNames) -> tuple[str, str]:
    """The verdict line and the facts under it."""
    model = report.current.get("model") or report.reference.get("model")
    counts = [max((int(getattr(c, side).get("count") or 0) for c in report.columns), default=0)
              for side in ("reference", "current")]
    facts = [("reference", window_fact(report.reference, counts[0])),
             ("current", window_fact(report.current, counts[1])),
             *([("model", f"<b>{esc(model)}</b>")] if model else []), ("thresholds", window_thresholds(report))]
    return esc(window_lead(report, names), 6 * SHOWN_CHARS), _facts(facts)


def compare_header(report: CompareReport, names: ClassNames) -> tuple[str, str]:
    lines = [f"{o.name}: {r}" for o in report.outputs for r in o.reasons]
    if not lines:
        pairs = report.counts.get("paired_predictions", 0)
        lines = [f"{report.shadow} agrees with the primary on {len(report.outputs)} output(s), {pairs:,} pairs."]
    drift = report.distribution
    lines.append(window_lead(drift, names).replace("Drift in", "Its distribution drifts in", 1)
                 .replace("No drift in", "Its distribution drifts in none of", 1))
    counts = report.counts
    facts = [("shadow", f"<b>{esc(report.shadow)}</b>")]
    if report.judged is not None:
        facts.append(("judged", f"<b>{esc(report.judged.describe())}</b>"))
    if "records" in report.distribution.current:  # a comparison of records, not of arrays
        facts.append(("window", window_fact({**report.distribution.current, "upstream": None})))
    facts += [
             ("pairs", f"<b>{counts.get('paired_predictions', 0):,}</b> paired predictions \u00b7 "
                       f"{counts.get('shadow_responses', 0):,} shadow answers, "
                       f"{counts.get('shadow_failed', 0):,} failed \u00b7 "
                       f"{counts.get('primary_failed', 0):,} primary failures"),
              ("thresholds", compare_thresholds(report.settings))]
    return "<br>".join(esc(line, 4 * SHOWN_CHARS) for line in lines), _facts(facts)


def _change(column: ColumnResult, names: ClassNames) -> str:
    ref, cur = column.reference, column.current
    if column.kind == "numeric":
        if "mean" not in ref or "mean" not in cur:
            return ""
        return f"mean {esc(number(ref['mean']))} \u2192 {esc(number(cur['mean']))}"
    plot = column.histogram
    labels, before, after = plot.get("labels") or [], plot.get("reference") or [], plot.get("current") or []
    if not labels or not sum(before) or not sum(after):
        return ""
    totals = int(ref.get("count") or sum(before)), int(cur.get("count") or sum(after))  # the plot shows 20 classes
    shares = [(b / totals[0], a / totals[1]) for b, a in zip(before, after, strict=False)]
    i = max(range(len(shares)), key=lambda k: abs(shares[k][1] - shares[k][0]))  # the class that moved most
    shown = names.label(column.name, str(labels[i])) or str(labels[i])
    return f"{esc(shown[:24])} {shares[i][0]:.0%} \u2192 {shares[i][1]:.0%}"


def columns_table(report: WindowReport, names: ClassNames) -> str:
    """Every column, the drifted first: what moved, the test that decided, its value and threshold."""
    rows = []
    for c in sorted(report.columns, key=lambda c: not c.drift):
        value = None if c.test is None else (c.statistics[c.test].p_value if c.test in P_VALUE_TESTS
                                             else c.statistics[c.test].value)
        verdict = '<td class="bad">drift' if c.drift else '<td class="ok">ok'
        kind = "classes" if c.kind == "categorical" else "values"
        rows.append(f"<tr><td>{column_name(c.name, c.kind, names)}<td>{kind}"
                    f"<td>{int(c.reference.get('count', 0)):,}<td>{int(c.current.get('count', 0)):,}"
                    f"<td>{_change(c, names)}<td>{esc(c.test or '')}<td>{cell(value)}<td>{cell(c.threshold)}"
                    f"{verdict}</tr>")
    return ('<table class="cols"><thead><tr><th>column<th>kind<th>reference<th>current<th>change<th>test'
            '<th>value<th>threshold<th>verdict</thead><tbody>' + "".join(rows) + "</tbody></table>")


def outputs_table(report: CompareReport) -> str:
    rows = []
    for o in report.outputs:
        st = o.statistics
        interval = o.disagreement_interval
        verdict = '<td class="bad">disagrees' if o.disagreement else '<td class="ok">agrees'
        rows.append(f"<tr><td><code>{esc(o.name)}</code><td>{o.pairs:,}"
                    f"<td>{cell(st['agreement'].value if 'agreement' in st else None)}"
                    f"<td>{f'{cell(interval[0])} to {cell(interval[1])}' if interval else chr(8211)}"
                    f"<td>{cell(st['mad'].value if 'mad' in st else None)}"
                    f"<td>{cell(st['spearman'].value if 'spearman' in st else None)}"
                    f"<td>{cell(st['mcnemar'].p_value if 'mcnemar' in st else None)}{verdict}</tr>")
    return ('<table class="cols"><thead><tr><th>output<th>pairs<th>agreement<th>disagreement interval<th>MAD'
            '<th>Spearman<th>McNemar p<th>verdict</thead><tbody>' + "".join(rows) + "</tbody></table>")


def _class(output: str, label: str, names: ClassNames, limit: int = SHOWN_CHARS) -> str:
    """A class by name (cut to ``limit``) with its label beside it, or by its label alone."""
    named = names.name(output, label)
    return f'{esc(named, limit)} <span class="s">{esc(label, limit)}</span>' if named else esc(label, limit)


def _head(output: str, label: str, names: ClassNames, limit: int) -> str:
    """A matrix heading: the class cut to ``limit``, in full in its tooltip when cut."""
    full = names.name(output, label) or label
    tip = f' title="{esc(full)}"' if len(full) > limit else ""
    return f"<th{tip}>{_class(output, label, names, limit)}"


def confusion_table(output: OutputComparison, names: ClassNames) -> str:
    """Primary's top-1 class (rows) against the shadow's (columns), shaded by each row's share."""
    confusion = output.confusion
    if not confusion:
        return ""
    classes, matrix = list(confusion["classes"]), confusion["matrix"]
    other = ["<th>other"] if confusion["other"] else []
    tops = [_head(output.name, c, names, 12) for c in classes] + other
    sides = [_head(output.name, c, names, 28) for c in classes] + other
    rows = []
    for i, (head, line) in enumerate(zip(sides, matrix, strict=True)):
        total = sum(line) or 1
        cells = []
        for j, count in enumerate(line):
            # "other" against "other" may hold the same class or two: neither green nor red
            kind = "" if max(i, j) >= len(classes) and i == j else ("d" if i == j else ("x" if count else ""))
            shade = f' style="--a:{count / total:.2f}"' if count and kind else ""
            cells.append(f'<td class="{kind}"{shade}>{count:,}' if kind else f"<td>{count:,}")
        same = f"{line[i] / total:.0%}" if i < len(classes) else "\u2013"
        rows.append(f"<tr>{head}{''.join(cells)}<td>{sum(line):,}<td>{same}</tr>")
    top = "".join(tops)
    return ('<table class="cm"><thead><tr><th>primary \u2193 shadow \u2192' + top + "<th>total<th>same"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def _answer(output: str, label: str | None, score: float | None, names: ClassNames) -> str:
    parts = [_class(output, label, names)] if label is not None else []
    if score is not None:
        parts.append(f'<span class="n">{esc(number(score))}</span>')
    return " ".join(parts) or "\u2013"


def trace_link(template: str) -> str:
    """Check a ``--trace-url`` template: http(s), with ``{trace_id}`` once, where the id goes."""
    if not template.startswith(("https://", "http://")) or template.count("{trace_id}") != 1 \
            or template.replace("{trace_id}", "").count("{") or any(c.isspace() for c in template):
        raise ValueError(f"{template!r}: give an http(s) address with {{trace_id}} where the trace id goes, "
                         "e.g. https://tempo.example/trace/{trace_id}")
    return template


def _trace(trace_id: str | None, template: str | None) -> str:
    if not trace_id:
        return "<td>"
    if template is None or not _TRACE_ID.fullmatch(trace_id):  # only a real W3C trace id becomes a link
        return f"<td><code>{esc(trace_id)}</code>"
    return f'<td><a href="{esc(template.replace("{trace_id}", trace_id))}"><code>{esc(trace_id)}</code></a>'


def disagreements_table(output: OutputComparison, names: ClassNames,
                        entries: list[dict[str, Any]] | None = None, trace_url: str | None = None) -> str:
    """The pairs that disagree most (``entries``, by default all kept), with the ids that lead
    to the request and its trace (a link to it with ``trace_url``, checked by `trace_link`)."""
    entries = output.disagreements if entries is None else entries
    if not entries:
        return ""
    traced = any(e.get("trace_id") for e in entries)
    timed = any(e.get("time") for e in entries)  # pairs of arrays have no time
    rows = []
    for e in entries:
        trace = _trace(e.get("trace_id"), trace_url) if traced else ""
        when = f"<td>{esc(_when(e.get('time')))}" if timed else ""
        rows.append(f"<tr><td><code>{esc(e.get('request_id') or '')}</code>{trace}{when}"
                    f"<td>{_answer(output.name, e.get('primary_class'), e.get('primary_score'), names)}"
                    f"<td>{_answer(output.name, e.get('shadow_class'), e.get('shadow_score'), names)}"
                    f"<td>{cell(e.get('difference'))}</tr>")
    return ('<table class="cols worst"><thead><tr><th>request id' + ("<th>trace id" if traced else "")
            + ("<th>time (UTC)" if timed else "") + "<th>primary<th>shadow<th>largest difference</thead><tbody>"
            + "".join(rows)
            + "</tbody></table>")
