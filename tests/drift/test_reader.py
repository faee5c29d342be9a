"""The reader accepts what the record schema allows, from real Parquet files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.drift import DriftError, Window, profile_records
from sidecar.drift.reader import read_chunks
from sidecar.drift.summary import CategoricalColumn, NumericColumn
from sidecar.drift.synthetic import START, records_table, write_records
from sidecar.records.schema import RESPONSE, SCHEMA, TENSOR


def _tensor(name: str, datatype: str, shape: list[int], values: list[float] | None,
            strings: list[bytes] | None = None) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "values": values, "strings": strings}


def _response(upstream: str, outputs: list[dict[str, object]] | None, error: str | None = None) -> dict[str, object]:
    return {"upstream": upstream, "model_version": "1", "status": 200 if error is None else 504,
            "latency_ms": 1.0, "error": error, "outputs": outputs}


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _row(i: int, primary: dict[str, object] | None, shadows: list[dict[str, object]] | None = None,
         inputs: list[dict[str, object]] | None = None, model: str = "m") -> dict[str, object]:
    return {"request_id": f"r{i}", "timestamp": START + timedelta(seconds=i), "model": model, "protocol": "http",
            "inputs": inputs, "primary": primary, "shadows": shadows}


def test_batches_orders_missing_outputs_failures_and_strings(tmp_path: Path) -> None:
    rows = [
        _row(0, _response("primary", [_tensor("p", "FP32", [2, 3], [0.1, 0.2, 0.7, 0.5, 0.4, 0.1]),
                                      _tensor("c", "INT64", [2, 1], [3, 4])]),
             [_response("v2", [_tensor("p", "FP32", [2, 3], [0.2, 0.1, 0.7, 0.1, 0.8, 0.1])]),
              _response("v3", None, "timeout")],
             [_tensor("x", "FP32", [2, 2], [1, 2, 3, 4])]),
        _row(1, _response("primary", [_tensor("c", "INT64", [1], [5]),  # another order, no batch dim given
                                      _tensor("p", "FP32", [1, 3], [0.3, 0.3, 0.4])]),
             [_response("v2", None, "connection")]),
        _row(2, None),  # no primary response recorded
        _row(3, _response("primary", [_tensor("t", "BYTES", [1, 1], None, [b"yes"])]), []),
    ]
    _write(tmp_path / "r" / "a.parquet", rows)
    chunk = next(read_chunks(Window(tmp_path / "r"), shadows=("v2", "v3"), inputs=True))
    p = chunk.tensors["primary"]["p"]
    assert np.allclose(p.take(), [[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    assert p.prediction_rows().tolist() == [0, 0, 1]
    assert chunk.tensors["primary"]["c"].take().ravel().tolist() == [3, 4, 5]
    assert chunk.tensors["primary"]["t"].take().ravel().tolist() == [b"yes"]
    assert chunk.tensors["v2"]["p"].rows.tolist() == [0]
    assert chunk.failed == {"primary": 0, "v2": 1, "v3": 1} and chunk.responses["primary"] == 3
    assert chunk.tensors["inputs"]["x"].take().tolist() == [[1, 2], [3, 4]]
    assert chunk.upstreams == {"v2", "v3"}
    profile = profile_records(Window(tmp_path / "r"))
    t, c, x = profile.columns["t"], profile.columns["c"], profile.columns["input:x[1]"]
    assert isinstance(t, CategoricalColumn) and t.counts == {"yes": 1}
    assert isinstance(c, CategoricalColumn) and c.counts == {"3": 1, "4": 1, "5": 1}
    assert isinstance(x, NumericColumn) and x.count == 2


def test_rows_of_varying_size_are_pooled(tmp_path: Path) -> None:
    rows = [_row(i, _response("primary", [_tensor("seq", "FP32", [1, i + 1], [float(i)] * (i + 1))]))
            for i in range(4)]
    _write(tmp_path / "r" / "a.parquet", rows)
    profile = profile_records(Window(tmp_path / "r"))
    seq = profile.columns.get("seq[*]")
    assert list(profile.columns) == ["seq[*]"] and isinstance(seq, NumericColumn) and seq.count == 10


def test_time_range_model_and_suffix_filters(tmp_path: Path) -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(3), 100)
    write_records(tmp_path / "r", {"probs": probs}, segment_rows=30)
    write_records(tmp_path / "r" / "other", {"probs": probs[:10]}, model="other", prefix="o")
    (tmp_path / "r" / "x.parquet.partial").write_bytes(b"\0")
    window = Window(tmp_path / "r", "classifier", START + timedelta(seconds=10), START + timedelta(seconds=40))
    chunks = list(read_chunks(window, chunk_rows=7))
    assert sum(c.records for c in chunks) == 30
    got = np.concatenate([c.tensors["primary"]["probs"].take() for c in chunks])
    assert np.allclose(got, probs[10:40])
    with pytest.raises(DriftError, match=r"2 models .*--model"):
        profile_records(Window(tmp_path / "r"))
    with pytest.raises(DriftError, match="no records in"):
        profile_records(Window(tmp_path / "r", "nope"))
    with pytest.raises(DriftError, match="no responses from 'v9'"):
        profile_records(Window(tmp_path / "r", "classifier"), upstream="v9")


def test_missing_and_foreign_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match="no records at"):
        profile_records(Window(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriftError, match=r"no \.parquet segments"):
        profile_records(Window(tmp_path / "empty"))
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(DriftError, match="not a record segment"):
        profile_records(Window(tmp_path / "foreign.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DriftError, match="cannot read segment"):
        profile_records(Window(tmp_path / "broken.parquet"))


def test_synthetic_writer_matches_the_schema() -> None:
    table = records_table({"p": np.ones((3, 2))}, shadows={"s": {"p": np.ones((3, 2))}},
                          shadow_errors={"s": np.array([False, True, False])})
    assert table.schema.equals(SCHEMA) and table.schema.field("primary").type == RESPONSE
    assert table.schema.field("inputs").type.value_type == TENSOR
    assert table.column("shadows").to_pylist()[1][0]["outputs"] is None
