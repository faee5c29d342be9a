"""Records to Arrow: exactly the record schema, values intact."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow.compute as pc

from sidecar.records.decode import tensor_value
from sidecar.records.schema import SCHEMA
from sidecar.records.tables import Record, ResponseRecord, to_table

SCORES = tensor_value("OUT", "FP32", np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32))
WORDS = tensor_value("TXT", "BYTES", np.array([b"a", b""], dtype=object))
COUNTS = tensor_value("N", "INT64", np.array([3, -4], dtype=np.int64))


def records() -> list[Record]:
    primary = ResponseRecord("primary", "1", 200, 2.5, None, [SCORES, WORDS])
    return [
        Record("r1", 1_700_000_000.25, "m", "http", [COUNTS], primary,
               [ResponseRecord("v2", "2", 200, 3.0, None, [SCORES]),
                ResponseRecord("down", None, None, 0.4, "connection", None)]),
        Record("r2", 1_700_000_001.0, "m", "grpc", None,
               ResponseRecord("primary", None, 400, 0.3, "bad input", None), []),
    ]


def test_the_table_has_exactly_the_record_schema_and_validates() -> None:
    table = to_table(records())
    assert table.schema.equals(SCHEMA, check_metadata=True)
    table.validate(full=True)
    assert to_table([]).num_rows == 0


def test_values_survive_the_round_trip() -> None:
    first, second = to_table(records()).to_pylist()
    assert first["request_id"] == "r1" and first["protocol"] == "http"
    assert first["timestamp"] == datetime.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=datetime.timezone.utc)
    assert first["inputs"] == [{"name": "N", "datatype": "INT64", "shape": [2], "values": [3.0, -4.0],
                                "strings": None}]
    out, txt = first["primary"]["outputs"]
    assert out == {"name": "OUT", "datatype": "FP32", "shape": [2, 2], "values": [0.25, 0.75, 1.0, 0.0],
                   "strings": None}
    assert txt["strings"] == [b"a", b""] and txt["values"] is None
    assert [s["upstream"] for s in first["shadows"]] == ["v2", "down"]
    assert first["shadows"][1] == {"upstream": "down", "model_version": None, "status": None, "latency_ms": 0.4,
                                   "error": "connection", "outputs": None}
    assert second["inputs"] is None and second["shadows"] == []
    assert second["primary"]["status"] == 400 and second["primary"]["outputs"] is None


def test_large_tensors_are_built_without_python_loops() -> None:
    big = tensor_value("BIG", "FP32", np.random.default_rng(0).normal(size=(64, 4096)).astype(np.float32))
    record = Record("r", 0.0, "m", "http", None, ResponseRecord("primary", "1", 200, 1.0, None, [big]), [])
    column = to_table([record] * 8).column("primary")
    values = pc.list_flatten(pc.struct_field(pc.list_flatten(pc.struct_field(column, "outputs")), "values"))
    assert len(values) == 8 * 64 * 4096
