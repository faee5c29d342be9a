"""The confusion matrix and the pairs that disagree most, from arrays and from real records
(with and without the records' trace_id column)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.drift import Window, compare_arrays, compare_records, render_html
from sidecar.drift.reader import ID_CHARS, read_chunks
from sidecar.drift.report_pairs import MATRIX_CLASSES, MAX_CELLS, Confusion, WorstPairs
from sidecar.drift.synthetic import records_table, write_records

from .conftest import softmax


def test_confusion_counts_every_pair_and_folds_rare_classes_into_other() -> None:
    rng = np.random.default_rng(1)
    primary = rng.integers(0, 15, 5000)
    shadow = np.where(rng.random(5000) < 0.9, primary, rng.integers(0, 15, 5000))
    confusion = Confusion()
    confusion.add(primary[:2000], shadow[:2000])
    confusion.add(primary[2000:], shadow[2000:])  # chunk by chunk, the same counts
    document = confusion.to_json()
    assert document is not None and document["other"] and len(document["classes"]) == MATRIX_CLASSES
    matrix = np.array(document["matrix"])
    assert matrix.shape == (MATRIX_CLASSES + 1, MATRIX_CLASSES + 1) and matrix.sum() == 5000
    assert document["classes"] == sorted(document["classes"], key=int)  # in reading order
    first = document["classes"][0]
    expected = int(((primary == int(first)) & (shadow == int(first))).sum())
    assert matrix[0, 0] == expected
    assert np.trace(matrix[:-1, :-1]) <= int((primary == shadow).sum())
    many = Confusion()
    many.add(np.arange(MAX_CELLS + 1), np.arange(MAX_CELLS + 1))  # an id-like output: no matrix, bounded memory
    assert many.to_json() is None and many.overflow and not many.counts


def test_worst_pairs_list_top1_flips_first_then_the_largest_differences() -> None:
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(600, 4)))
    shadow = probs + rng.normal(0, 0.01, probs.shape)
    flipped = np.flatnonzero(probs.argmax(1) == 2)[:5]
    shadow[flipped] = probs[flipped][:, ::-1]
    shadow[7, 0] = np.nan  # one side NaN: the largest difference there is
    ids = [f"r-{i}" for i in range(600)]
    report = compare_arrays({"probs": probs}, {"probs": shadow}, request_ids=ids)
    worst = report.outputs[0].disagreements
    assert len(worst) == 20
    flips = [e for e in worst if not e["agree"]]
    assert {e["request_id"] for e in flips} >= {f"r-{i}" for i in flipped}
    assert worst[:len(flips)] == flips  # disagreements on the class come first
    agreeing = [e for e in worst if e["agree"]]
    if 7 not in set(flipped) and probs[7].argmax() == np.nanargmax(shadow[7]):
        assert agreeing[0]["request_id"] == "r-7" and agreeing[0]["difference"] is None
    differences = [e["difference"] for e in agreeing if e["difference"] is not None]
    assert differences == sorted(differences, reverse=True)
    entry = flips[0]
    assert entry["primary_class"] == "2" and entry["shadow_class"] != "2" and entry["time"] is None
    assert entry["primary_score"] == probs[int(entry["request_id"][2:])].max()
    json.dumps(report.to_json(), allow_nan=False)
    assert report.outputs[0].confusion is not None
    single = compare_arrays({"score": probs[:, 0]}, {"score": probs[:, 0] + 0.5 * (np.arange(600) == 9)})
    assert single.outputs[0].confusion is None and single.outputs[0].disagreements[0]["difference"] == 0.5
    assert single.outputs[0].disagreements[0]["primary_class"] is None


def test_worst_pairs_stay_bounded_and_skip_identical_pairs() -> None:
    worst = WorstPairs(limit=3)
    for _ in range(4):
        values = np.arange(10, dtype=np.float64)
        worst.add(np.zeros(10, bool), values, None, (values, values), None, None)
    assert [e["difference"] for e in worst.to_json()] == [9.0, 9.0, 9.0]
    same = WorstPairs()
    same.add(np.zeros(5, bool), np.zeros(5), None, None, None, None)
    assert same.to_json() == []


def _traced(directory: Path, probs: np.ndarray, shadow: np.ndarray, traced: bool) -> None:
    n = len(probs)
    traces = [f"{i:032x}" if traced and i % 2 == 0 else None for i in range(n)]
    write_records(directory, {"probs": probs}, shadows={"v2": {"probs": shadow}}, segment_rows=200,
                  trace_ids=traces if traced else None)
    if not traced:  # a segment written before the records carried trace ids
        for path in directory.glob("*.parquet"):
            table = pq.read_table(path)
            pq.write_table(table.drop_columns(["trace_id"]), path)


def test_reader_gives_trace_ids_when_the_segment_has_them(tmp_path: Path) -> None:
    probs = softmax(np.random.default_rng(3).normal(size=(400, 3)))
    _traced(tmp_path / "new", probs, probs, traced=True)
    _traced(tmp_path / "old", probs, probs, traced=False)
    chunk = next(read_chunks(Window(tmp_path / "new"), shadows=("v2",), request_ids=True))
    keys = chunk.keys(np.array([0, 1, 2]))
    assert keys.trace_id(np.array([0, 1, 2])) == [f"{0:032x}", None, f"{2:032x}"]
    assert keys.request_id(np.array([2])) == ["req-2"]
    old = next(read_chunks(Window(tmp_path / "old"), shadows=("v2",), request_ids=True))
    assert old.trace_ids is None and old.keys(np.array([0])).trace_id(np.array([0])) == [None]


def test_compare_records_names_requests_and_traces(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(size=(400, 3)))
    shadow = probs.copy()
    shadow[:, [0, 1]] = shadow[:, [1, 0]]  # classes 0 and 1 swapped
    _traced(tmp_path / "records" / "new", probs, shadow, traced=True)
    _traced(tmp_path / "records" / "old", probs, shadow, traced=False)
    report = compare_records(Window(tmp_path / "records"), "v2")
    output = report.outputs[0]
    confusion = output.confusion
    assert confusion is not None and confusion["classes"] == ["0", "1", "2"]
    p = probs.argmax(1)
    assert confusion["matrix"][0][1] == 2 * int((p == 0).sum()) and confusion["matrix"][2][2] == 2 * int((p == 2).sum())
    worst = output.disagreements
    assert worst and all(not e["agree"] and e["request_id"].startswith("req-") for e in worst)
    assert any(e["trace_id"] is not None and len(e["trace_id"]) == 32 for e in worst)
    for e in worst:
        row = int(e["request_id"][4:])
        assert e["primary_class"] == str(p[row]) and e["time"].startswith("2025-01-01T")
        assert e["trace_id"] in (None, f"{row:032x}")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=200)), min_size=30, max_size=30),
       st.lists(st.text(max_size=300), min_size=30, max_size=30))
def test_any_recorded_ids_reach_the_report_bounded(tmp_path_factory: pytest.TempPathFactory,
                                                   traces: list[str | None], ids: list[str]) -> None:
    directory = tmp_path_factory.mktemp("ids")
    probs = softmax(np.random.default_rng(5).normal(size=(30, 3)))
    table = records_table({"probs": probs}, shadows={"v2": {"probs": probs[:, ::-1].copy()}}, trace_ids=traces)
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id", pa.array(ids, pa.string()))
    pq.write_table(table, directory / "segment-00000.parquet")
    report = compare_records(Window(directory), "v2")
    worst = report.outputs[0].disagreements
    assert worst and all(len(e["request_id"] or "") <= ID_CHARS and len(e["trace_id"] or "") <= ID_CHARS
                         for e in worst)
    assert {e["request_id"] for e in worst} <= {i[:ID_CHARS] for i in ids}
    json.dumps(report.to_json(), allow_nan=False)
    render_html(report)
