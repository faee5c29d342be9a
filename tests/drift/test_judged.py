"""The compare report names the version it judged: one version, two versions, failed and canary answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sidecar.drift.cli import main
from sidecar.drift.judged import Judged, judged_versions
from sidecar.drift.reader import Window
from sidecar.drift.synthetic import records_table

from .conftest import softmax


def _with_versions(table: pa.Table, versions: Sequence[str | None], column: str = "shadows") -> pa.Table:
    """The table with each row's (only) shadow response carrying ``versions[row]``."""
    shadows = table.column(column).combine_chunks()
    flat = shadows.flatten()
    fields = {f.name: flat.field(f.name) for f in flat.type}
    fields["model_version"] = pa.array(versions, pa.string())
    rebuilt = pa.StructArray.from_arrays(list(fields.values()), fields=list(flat.type))
    lists = pa.ListArray.from_arrays(shadows.offsets, rebuilt)
    return table.set_column(table.schema.get_field_index(column), column, lists)


def _write(directory: Path, versions: Sequence[str | None], *, errors: np.ndarray | None = None,
           canary_rows: int = 0) -> Path:
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(size=(len(versions), 4)))
    table = records_table({"probs": probs}, shadows={"v2": {"probs": probs}},
                          shadow_errors={"v2": errors} if errors is not None else None)
    table = _with_versions(table, versions)
    if canary_rows:  # requests the canary served: what the client got is not the primary's answer
        primary = table.column("primary").combine_chunks()
        upstream = pa.array(["canary"] * canary_rows + ["primary"] * (len(versions) - canary_rows))
        fields = [upstream if f.name == "upstream" else primary.field(f.name) for f in primary.type]
        table = table.set_column(table.schema.get_field_index("primary"), "primary",
                                 pa.StructArray.from_arrays(fields, fields=list(primary.type)))
    directory.mkdir(parents=True)
    pq.write_table(table, directory / "segment-00000.parquet")
    return directory


def _compare(records: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    code = main(["compare", "--records", str(records), "--shadow", "v2", "--json", str(out / "c.json"),
                 "--html", str(out / "c.html")])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    return printed.out, json.loads((out / "c.json").read_text())


def test_one_version_is_named_in_json_table_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _write(tmp_path / "one", ["2"] * 200)
    printed, document = _compare(records, tmp_path, capsys)
    assert document["judged"] == {"model": "classifier", "version": "2"}
    assert "primary vs v2 (classifier version 2):" in printed
    assert "<dt>judged</dt><dd><b>classifier version 2</b>" in (tmp_path / "c.html").read_text()


def test_two_versions_give_no_version_and_the_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _write(tmp_path / "two", ["2"] * 150 + ["3"] * 50)
    printed, document = _compare(records, tmp_path, capsys)
    assert document["judged"] == {"model": "classifier", "version": None, "versions": {"2": 150, "3": 50}}
    assert "classifier versions 2 (150), 3 (50)" in printed


def test_failed_and_canary_served_answers_are_not_counted(tmp_path: Path) -> None:
    errors = np.zeros(100, bool)
    errors[:10] = True  # these answered from version 9, but with an error: nothing paired
    versions = ["9"] * 10 + ["4"] * 10 + ["2"] * 80  # rows 10..19: served by the canary
    records = _write(tmp_path / "mixed", versions, errors=errors, canary_rows=20)
    judged = judged_versions(Window(records), "v2")
    assert judged == Judged("classifier", {"2": 80}) and judged.version == "2"


def test_answers_without_a_version_are_unknown_and_refuse_a_version(tmp_path: Path) -> None:
    records = _write(tmp_path / "none", [None] * 30 + ["2"] * 70)
    judged = judged_versions(Window(records, model="classifier"), "v2")
    assert judged.to_json() == {"model": "classifier", "version": None, "versions": {"2": 70, "unknown": 30}}
    assert judged_versions(Window(records), "other").to_json() == {"model": None, "version": None, "versions": {}}


def test_the_time_window_limits_what_is_counted(tmp_path: Path) -> None:
    records = _write(tmp_path / "time", ["2"] * 50 + ["3"] * 50)  # one record a second from START
    stamps = pq.read_table(records).column("timestamp")
    since = pc.min_max(stamps)["min"].as_py()
    judged = judged_versions(Window(records, since=since + timedelta(seconds=50)), "v2")
    assert judged.to_json() == {"model": "classifier", "version": "3"}
