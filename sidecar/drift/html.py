"""The HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched),
summaries only (never raw data), so its size depends on the number of columns, not of records.

At the top, what a person needs in five seconds: the verdict, the windows and their counts,
the thresholds used. Then the tables (every column or output, the failing first), for compare
the confusion matrix of top-1 classes and the pairs that disagree most, and the plots: each
column's reference and current distributions overlaid on a value axis, and the agreement over
time. Class names come from the model's label files (`ClassNames`).
"""

from __future__ import annotations

from pathlib import Path

from sidecar.drift.html_svg import class_bars, distribution_svg, esc, timeline_svg
from sidecar.drift.html_tables import (
    column_name,
    columns_table,
    compare_header,
    confusion_table,
    disagreements_table,
    outputs_table,
    window_header,
)
from sidecar.drift.paired import CompareReport, OutputComparison
from sidecar.drift.render import Report, status
from sidecar.drift.report_classes import ClassNames
from sidecar.drift.window import ColumnResult, WindowReport

STYLE = """*{box-sizing:border-box}body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#fff}
main{max-width:1280px;margin:0 auto;padding:20px 28px}h1{font-size:22px;margin:0}h2{font-size:17px;margin:28px 0 8px}
h3{font-size:15px;margin:18px 0 6px}h1,h2,h3,p{overflow-wrap:anywhere}.cols td,.cols th{white-space:nowrap}
.cols td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:160px}
header{border-bottom:1px solid #d7dce1;padding-bottom:14px}
.top{display:flex;align-items:center;gap:14px;flex-wrap:wrap}.badge{font-weight:700;font-size:15px;padding:4px 12px;
border-radius:4px;color:#fff;background:#2e7d32;letter-spacing:.04em}.badge.bad{background:#c62828;color:#fff}
.lead{font-size:16px;margin:10px 0;overflow-wrap:anywhere;max-width:100%}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:6px 24px;margin:8px 0 0}
.facts div{min-width:0}.facts dt{font-size:11px;text-transform:uppercase;color:#5c6670;letter-spacing:.05em}
.facts dd{margin:0;overflow-wrap:anywhere}code{font:12px ui-monospace,monospace;overflow-wrap:anywhere}a{color:#1f5fa8}
table{border-collapse:collapse;margin:4px 0 8px}.cols,.cm{display:block;overflow-x:auto;max-width:100%}
th,td{padding:3px 9px;text-align:left;border-bottom:1px solid #e3e6ea;
vertical-align:top}thead th{border-bottom:2px solid #c4cad0;font-size:12px;color:#434c55}
.cols td:nth-child(n+3){font-variant-numeric:tabular-nums}.bad{color:#c62828;font-weight:600}.ok{color:#2e7d32}
.cm td{text-align:right;min-width:44px;font-variant-numeric:tabular-nums}
.cm td.d{background:rgba(46,125,50,calc(var(--a)*.4))}
.cm td.x{background:rgba(198,40,40,calc(.15 + var(--a)*.5));font-weight:600}
.cm th{font-weight:500}.cm tbody th{white-space:nowrap}.s{color:#6b747c;font-size:11px}
.n{color:#434c55;font-variant-numeric:tabular-nums}.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));
gap:14px}figure{margin:0;padding:6px;border:1px solid #e3e6ea;border-radius:4px;min-width:0}
figcaption{font-size:12px;overflow-wrap:anywhere;margin-bottom:4px}figure.drift{border-color:#e7a3a3}
figure svg{width:100%;height:auto}svg.time{max-width:100%;height:auto}
svg text{font-size:10px;fill:#434c55}.dist text{text-anchor:middle}text.k{text-anchor:end}
.ref{fill:#8fb4dc;stroke:none}.cur{fill:none;stroke:#d9480f;stroke-width:1.6}.curfill{fill:#d9480f}
.axis{stroke:#7d868f;fill:none}path.grid{stroke:#e3e6ea}.line{fill:none;stroke:#1f5fa8;stroke-width:2}
.limit{stroke:#c62828;stroke-dasharray:4 3}.note{font-size:11px;margin:0;color:#6b747c}
.key{display:inline-block;width:14px;height:9px;margin:0 4px 0 12px;vertical-align:middle}
.side{display:flex;flex-wrap:wrap;gap:8px 32px;align-items:flex-start}.side>div{min-width:0;max-width:100%}
details>summary{cursor:pointer;margin:10px 0;color:#1f5fa8}"""
SHOWN_PAIRS = 10  # of the pairs that disagree most, the page lists these; the JSON all it kept
LEGEND = ('<p class="s"><span class="key" style="background:#8fb4dc"></span>{ref}'
          '<span class="key" style="border-top:2px solid #d9480f"></span>{cur}</p>')


def _figure(column: ColumnResult, names: ClassNames) -> str:
    plot = column.histogram
    if "labels" in plot:
        svg = class_bars(plot, lambda label: names.label(column.name, label))
    else:
        low = min((w["min"] for w in (column.reference, column.current) if "min" in w), default=None)
        high = max((w["max"] for w in (column.reference, column.current) if "max" in w), default=None)
        svg = distribution_svg(plot, low, high) if plot else ""
    verdict = '<span class="bad">drift</span>' if column.drift else '<span class="ok">ok</span>'
    name = column_name(column.name, column.kind, names)
    marked = ' class="drift"' if column.drift else ""
    return (f"<figure{marked}><figcaption>{name} {verdict} "
            f"{esc(column.reason)}</figcaption>{svg}</figure>")


def _window_body(report: WindowReport, names: ClassNames, ref: str, cur: str) -> str:
    drifted = [c for c in report.columns if c.drift]
    others = [c for c in report.columns if not c.drift]
    legend = LEGEND.format(ref=esc(ref), cur=esc(cur))
    body = columns_table(report, names) + "<h3>Distributions</h3>" + legend
    if drifted:
        body += '<div class="figs">' + "".join(_figure(c, names) for c in drifted) + "</div>"
    if others and drifted:
        body += (f"<details><summary>the {len(others)} columns without drift</summary><div class=\"figs\">"
                 + "".join(_figure(c, names) for c in others) + "</div></details>")
    elif others:
        body += '<div class="figs">' + "".join(_figure(c, names) for c in others) + "</div>"
    return body


def _output(output: OutputComparison, report: CompareReport, names: ClassNames, trace_url: str | None) -> str:
    limit = 1 - report.settings.max_disagreement if output.timeline.get("metric") == "agreement" else None
    what = "top-1 agreement" if limit is not None else "mean absolute difference"
    side = []  # the matrix and the agreement over time side by side, where the page is wide enough
    matrix = confusion_table(output, names)
    if matrix:
        side.append(f"<div><p class=\"s\">top-1 class of the primary (rows) and of {esc(report.shadow)} "
                    f"(columns)</p>{matrix}</div>")
    timeline = timeline_svg(output.timeline, limit)
    if timeline:
        line = " (dashed: the lowest agreement allowed)" if limit is not None else ""
        side.append(f'<div><p class="s">{what} over time{line}</p>{timeline}</div>')
    parts = [f"<h3>{esc(output.name)}</h3>", f'<div class="side">{"".join(side)}</div>' if side else ""]
    shown = output.disagreements[:SHOWN_PAIRS]
    worst = disagreements_table(output, names, shown, trace_url)
    if worst:
        parts.append(f"<p class=\"s\">the {len(shown)} pairs that disagree most (the JSON report keeps "
                     f"{len(output.disagreements)}): top-1 disagreements first, then by the largest difference "
                     "of an element</p>" + worst)
    return "".join(parts)


def _title(report: Report, title: str | None) -> str:
    if title:
        return title
    if isinstance(report, CompareReport):
        return f"Primary vs {report.shadow}"
    model = report.current.get("model") or report.reference.get("model")
    return f"Drift of {model}" if model else "Drift report"


def render_html(report: Report, title: str | None = None, class_names: ClassNames | None = None,
                trace_url: str | None = None) -> str:
    """The whole report as one HTML page; ``title`` defaults to the model or the shadow's name.

    ``trace_url`` (``https://traces.example/trace/{trace_id}``, see `trace_link`) links each
    trace id to the tracing backend: a link, never a request the page makes.
    """
    names = class_names or ClassNames()
    verdict = status(report)
    heading = _title(report, title)
    if isinstance(report, CompareReport):
        lead, facts = compare_header(report, names)
        outputs = "".join(_output(o, report, names, trace_url) for o in report.outputs)
        body = ("<h2>Outputs</h2>" + outputs_table(report) + outputs
                + f"<h2>Distribution of {esc(report.shadow)} against the primary, same requests</h2>"
                + _window_body(report.distribution, names, "primary", report.shadow))
    else:
        lead, facts = window_header(report, names)
        body = "<h2>Columns</h2>" + _window_body(report, names, "reference", "current")
    shown = esc(verdict.upper().replace("+", " + "))
    badge = f'<span class="badge{" bad" if verdict != "pass" else ""}">{shown}</span>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width"><title>{esc(heading)}: {esc(verdict)}</title><style>{STYLE}</style>'
            f'</head><body><main><header><div class="top">{badge}<h1>{esc(heading)}</h1></div>'
            f'<p class="lead">{lead}</p>{facts}</header>{body}</main></body></html>\n')


def write_html(report: Report, path: Path, title: str | None = None, class_names: ClassNames | None = None,
               trace_url: str | None = None) -> None:
    path.write_text(render_html(report, title, class_names, trace_url), encoding="utf-8")
