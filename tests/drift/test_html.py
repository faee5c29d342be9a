"""The HTML report as a file: self-contained, small for a hundred columns, every string escaped
(hostile tensor, model, shadow, class and request names from real records through the CLI)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.drift import compare_arrays, render_html, window_drift
from sidecar.drift.cli import main
from sidecar.drift.html import STYLE
from sidecar.drift.html_svg import nice_ticks, timeline_svg
from sidecar.drift.html_tables import trace_link
from sidecar.drift.render import terminal_safe
from sidecar.drift.report_classes import ClassNames
from sidecar.drift.synthetic import records_table, write_records

from .conftest import softmax

EVIL = "</title></style><script>alert(1)</script><img src=x onerror=alert(2)>\"'&amp;\u202e"
TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "div", "span", "h1", "h2", "h3", "p",
        "dl", "dt", "dd", "code", "b", "br", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
        "svg", "path", "text", "polyline", "details", "summary", "a"}
ATTRIBUTES = {"class", "style", "viewbox", "width", "height", "role", "d", "x", "y", "points", "lang", "charset",
              "name", "content", "title", "href"}
LIMIT = 200 * 1024


class SafePage(HTMLParser):
    """Fails on any element or attribute a report never writes, and keeps the text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.styles: list[str] = []
        self.open: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in TAGS, f"unexpected element <{tag}>"
        for name, value in attrs:
            assert name in ATTRIBUTES, f"unexpected attribute {name}={value!r} on <{tag}>"
            if name == "href":  # a link to a trace, never fetched; only ever to http(s)
                assert tag == "a" and value is not None and value.startswith(("https://", "http://")), value
            if name == "style":
                assert value is not None and all(part.split(":")[0].strip() in ("--a", "background", "border-top")
                                                 for part in value.split(";") if part), value
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.open.append(f"/{tag}")

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] == "style":
            self.styles.append(data)
        else:
            self.text.append(data)


def check(page: str) -> str:
    """The page's text, after checking it holds only what a report writes."""
    parsed = SafePage(page)
    assert parsed.styles == [STYLE]  # no style but ours: nothing injected into it
    assert "<script" not in page.lower() and "url(" not in page and "@import" not in page  # attributes: SafePage
    return "".join(parsed.text)


def _hostile_records(directory: Path) -> None:
    rng = np.random.default_rng(5)
    n = 300
    probs = softmax(rng.normal(size=(n, 4)))
    classes = np.array([f"{EVIL}{i % 3}" for i in range(n)], dtype=object)
    shadow = probs[:, ::-1].copy()
    table = records_table({f"out{EVIL}": probs, "kind": classes}, model=EVIL,
                          shadows={f"v2{EVIL}": {f"out{EVIL}": shadow, "kind": classes[::-1]}})
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id",
                             pa.array([f"{EVIL}{i}" for i in range(n)], pa.string()))
    traces = pa.array([EVIL] * n, pa.string())
    if "trace_id" in table.column_names:
        table = table.set_column(table.schema.get_field_index("trace_id"), "trace_id", traces)
    else:
        table = table.append_column("trace_id", traces)
    directory.mkdir()
    pq.write_table(table, directory / "segment-00000.parquet")


def test_hostile_names_are_text_in_both_reports(tmp_path: Path) -> None:
    records = tmp_path / f"dir{EVIL[:20].replace('/', '_')}"
    _hostile_records(records)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{EVIL}class{i}" for i in range(4)) + "\n")
    shadow = f"v2{EVIL}"
    assert main(["compare", "--records", str(records), "--shadow", shadow, "--model", EVIL,
                 "--class-names", f"out{EVIL}={labels}", "--html", str(tmp_path / "c.html"),
                 "--trace-url", "https://traces.example/trace/{trace_id}"]) == 0
    page = (tmp_path / "c.html").read_text()
    text = check(page)
    assert "<a " not in page  # the recorded "trace ids" are no W3C trace ids: shown as text, never linked
    assert f"Primary vs {shadow}" in text and f"{EVIL}class0" in text and f"out{EVIL}" in text
    assert f"{EVIL}7" in text or any(f"{EVIL}{i}" in text for i in range(300))  # a request id, as text
    assert main(["report", "--reference", str(records), "--current", str(records), "--model", EVIL,
                 "--class-names", str(labels), "--html", str(tmp_path / "r.html")]) == 0
    text = check((tmp_path / "r.html").read_text())
    assert f"Drift of {EVIL}" in text and f"{EVIL}1" in text  # the model, a BYTES class


@settings(max_examples=12, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=24), min_size=1, max_size=3, unique=True),
       st.lists(st.text(max_size=30), max_size=5))
def test_any_column_and_class_name_is_escaped(columns: list[str], names: list[str]) -> None:
    rng = np.random.default_rng(0)
    arrays = {c: rng.normal(size=30) for c in columns}
    arrays[f"{columns[0]}probs"] = softmax(rng.normal(size=(30, 3)))
    report = window_drift(arrays, {k: v + 0.5 for k, v in arrays.items()})
    text = check(render_html(report, class_names=ClassNames(default=tuple(names))))
    words = " ".join(text.split())  # compared as a reader sees it: any run of white space is one
    for column in columns:
        assert " ".join(column.split()) in words


def test_a_hundred_columns_stay_under_200_kib(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    long_names = ClassNames(default=tuple(f"a long class name number {i}" for i in range(64)))
    arrays: dict[str, np.ndarray] = {f"score_{i}": rng.gamma(2, 1, 1500) for i in range(80)}
    arrays.update({f"class_{i}": rng.integers(0, 30, 1500) for i in range(20)})
    window = window_drift(arrays, {k: v * 1.1 for k, v in arrays.items()})
    assert len(window.columns) == 100
    probs = softmax(rng.normal(size=(1500, 48)))
    more = softmax(rng.normal(size=(1500, 50)))
    shadow = {"probs": np.roll(probs, 1, axis=1), "more": more + rng.normal(0, 0.01, more.shape)}
    compared = compare_arrays({"probs": probs, "more": more}, shadow, request_ids=[f"r{i}" for i in range(1500)])
    assert len(compared.distribution.columns) == 100
    sizes = {}
    for name, report in (("window", window), ("compare", compared)):
        page = render_html(report, class_names=long_names)
        (tmp_path / f"{name}.html").write_text(page)
        sizes[name] = len(page.encode())
        check(page)
    print(f"report sizes for 100 columns: {sizes}")
    assert max(sizes.values()) < LIMIT, sizes


def test_axes_read_as_values_and_times() -> None:
    assert nice_ticks(0.013, 0.94) == [0.2, 0.4, 0.6, 0.8]
    assert nice_ticks(-3.2, 3.1) == [-2.0, 0.0, 2.0]
    assert nice_ticks(5, 5) == [5]
    start = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
    svg = timeline_svg({"metric": "agreement", "start_us": [start + i * 60_000_000 for i in range(50)],
                        "pairs": [10] * 50, "value": [0.9 + 0.001 * i for i in range(50)]}, limit=0.95)
    assert ">00:10<" in svg and ">00:40<" in svg and "from 2025-01-01 00:00:00" in svg and 'class="limit"' in svg
    assert ">100%<" in svg
    rows = timeline_svg({"metric": "agreement", "start_us": [0, 10, 20], "pairs": [1, 1, 1], "value": [1, 0.5, 1]})
    assert "prediction rows 0 to 20" in rows


@pytest.mark.parametrize("values", [np.zeros(100), np.r_[np.zeros(99), 1.0], np.r_[np.full(50, np.nan), np.ones(50)]])
def test_degenerate_columns_still_draw(values: np.ndarray) -> None:
    report = window_drift({"x": values}, {"x": values[::-1] + 1})
    check(render_html(report))


def test_a_name_of_100_kb_stays_a_line() -> None:
    huge = "x" * 100_000
    rng = np.random.default_rng(9)
    labels = np.array([huge + str(i % 2) for i in range(40)], dtype=object)
    report = compare_arrays({huge: softmax(rng.normal(size=(40, 3))), "kind": labels},
                            {huge: softmax(rng.normal(size=(40, 3))), "kind": labels[::-1]},
                            request_ids=[huge] * 40)
    page = render_html(report, title=huge, class_names=ClassNames(default=(huge,)))
    check(page)
    assert len(page) < 60_000


@pytest.mark.parametrize("template", ["javascript:alert(1)//{trace_id}", "https://t.example/trace/", "ftp://x/{trace_id}",
                                      "https://t.example/{trace_id}/{trace_id}", "https://t.example/{x}{trace_id}",
                                      "https://t.example/ {trace_id}"])
def test_a_trace_url_is_http_with_one_place_for_the_id(template: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="give an http"):
        trace_link(template)
    with pytest.raises(SystemExit) as usage:
        main(["compare", "--records", "r", "--shadow", "v2", "--trace-url", template])
    assert usage.value.code == 2 and "--trace-url" in capsys.readouterr().err


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_trace_url_is_checked(template: str) -> None:
    try:
        checked = trace_link(template)
    except ValueError:
        return
    assert checked.startswith(("https://", "http://")) and checked.count("{") == 1
    assert trace_link("https://tempo.example/trace/{trace_id}?x=1") == "https://tempo.example/trace/{trace_id}?x=1"


def test_the_terminal_table_prints_no_control_character(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, rng = 200, np.random.default_rng(8)
    probs = softmax(rng.normal(size=(n, 3)))
    write_records(tmp_path / "records", {"out\x1b[2J\x1b]0;owned\x07": probs}, model="m\u202edelbat",
                  shadows={"v2\r\x1b[1A": {"out\x1b[2J\x1b]0;owned\x07": probs[:, ::-1].copy()}})
    assert main(["compare", "--records", str(tmp_path / "records"), "--shadow", "v2\r\x1b[1A"]) in (0, 1)
    printed = capsys.readouterr().out
    assert "out\\x1b[2J" in printed  # the name, escaped
    assert not [c for c in printed if not c.isprintable() and c != "\n"]


@given(st.text())
def test_terminal_safe_leaves_only_printable_lines(text: str) -> None:
    safe = terminal_safe(text)
    assert all(c.isprintable() for line in safe.split("\n") for c in line)
    assert safe.count("\n") == text.count("\n") and terminal_safe(safe) == safe
