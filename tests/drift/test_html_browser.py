"""The reports in a real headless Chromium (Debian's): built by the CLI from real records, they
load without a console error or a single request beyond the file itself, fit the window's width,
leave a screenshot in the test's directory, and say the key facts in their text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sidecar.drift.cli import main
from sidecar.drift.synthetic import write_records
from tests.tools import debian_tool

from .chromium import Chromium, Page
from .conftest import class_windows, says5_for_3

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LONG = "an_output_whose_name_is_far_longer_than_any_column_of_a_table_should_ever_be_" * 2
CONFIG = """name: "classifier"
platform: "onnxruntime_onnx"
output [ { name: "probs" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Page, Path]]]:
    """Both reports, opened in one browser: each page and its screenshot."""
    program = debian_tool("chromium", "chromium")
    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(8)
    n = 3000
    window = class_windows(rng, n)
    reference = window(0.0)
    shadow = says5_for_3(reference)  # v2 says dog where the primary says cat
    traces = [f"{i:032x}" if i % 2 else None for i in range(n)]
    write_records(root / "reference", {"probs": reference, LONG: rng.normal(size=n)},
                  shadows={"v2": {"probs": shadow, LONG: rng.normal(size=n)}}, segment_rows=1000, trace_ids=traces)
    write_records(root / "current", {"probs": window(1.5), LONG: rng.normal(1, 1, n)}, segment_rows=1000)
    model = root / "classifier"
    model.mkdir()
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    common = ["--model-dir", str(model), "--model", "classifier"]
    assert main(["report", "--reference", str(root / "reference"), "--current", str(root / "current"),
                 "--html", str(root / "drift.html"), *common]) == 0
    assert main(["compare", "--records", str(root / "reference"), "--shadow", "v2",
                 "--html", str(root / "compare.html"), "--trace-url", "https://traces.example/trace/{trace_id}",
                 *common]) == 0
    with Chromium(program, root / "profile") as browser:
        opened = {name: (browser.open(root / f"{name}.html", root / f"{name}.png"), root / f"{name}.png")
                  for name in ("drift", "compare")}
        opened["narrow"] = (browser.open(root / "compare.html", root / "narrow.png", width=720), root / "narrow.png")
        yield opened


def _loaded_cleanly(page: Page, screenshot: Path, width: int = 1280) -> None:
    assert page.errors == []
    assert len(page.requests) == 1 and page.requests[0].startswith("file://")  # itself, nothing else
    assert page.width <= width, f"the page is {page.width} px wide: something does not wrap"
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert int.from_bytes(png[16:20], "big") == width and int.from_bytes(png[20:24], "big") > 900  # the whole page


def test_drift_report_in_chromium(pages: dict[str, tuple[Page, Path]]) -> None:
    page, screenshot = pages["drift"]
    _loaded_cleanly(page, screenshot)
    title = page.html.split("<title>")[1].split("</title>")[0]
    assert title == "Drift of classifier: drift" and "/" not in title  # no local path
    text = page.text
    assert "DRIFT" in text and "Drift in 12 of 12 columns: airplane (probs[0])" in text
    assert "REFERENCE" in text and "3,000 records" in text and "2025-01-01 00:00:00 to 00:49:59 UTC" in text
    assert "wasserstein \u2265 0.1" in text and "\u03b1 0.05" in text  # the thresholds used
    assert all(name in text for name in CLASSES)  # class names from the model's labels.txt
    assert "OUTPUT" not in text and "probs.top1" in text


def test_compare_report_in_chromium(pages: dict[str, tuple[Page, Path]]) -> None:
    page, screenshot = pages["compare"]
    _loaded_cleanly(page, screenshot)
    text = page.text
    assert "DISAGREEMENT" in text and "probs: top-1 disagreement" in text
    assert "classifier version 1" in text and "3,000 paired predictions" in text
    assert "primary \u2193 shadow \u2192" in text  # the confusion matrix, its rows named by class
    matrix = page.html.split('<table class="cm">')[1].split("</table>")[0]
    assert "cat" in matrix and "dog" in matrix and 'class="x"' in matrix
    worst = page.html.split('<table class="cols worst">')[1].split("</table>")[0]
    assert "req-" in worst and "trace id" in worst
    assert '<a href="https://traces.example/trace/0000000000000000000000000000' in worst  # linked, never fetched
    assert worst.count("<tr>") == 11  # the head and the 10 pairs that disagree most
    assert "cat" in worst and "dog" in worst
    assert "00:10" in text and "time (UTC), from 2025-01-01 00:00:00" in text  # the agreement's clock axis


def test_a_narrow_window_scrolls_the_wide_tables_not_the_page(pages: dict[str, tuple[Page, Path]]) -> None:
    page, screenshot = pages["narrow"]
    _loaded_cleanly(page, screenshot, width=720)
    assert "primary \u2193 shadow \u2192" in page.text
