"""The record format: what the sidecar writes for every mirrored request, and drift reads.

One row per mirrored request, in Parquet segment files in one directory, so pandas,
DuckDB, Spark and pyarrow read the directory as one dataset::

    import pyarrow.dataset as ds
    table = ds.dataset("records/", format="parquet").to_table()

Columns (schema version 1; new columns may be added, at the end, none renamed or removed, so
the version stays 1 and a reader asks for a newer column only when the segment has it):

========== ===================== ===============================================================
column     type                  meaning
========== ===================== ===============================================================
request_id string                the v2 request ``id``, or the one the sidecar assigned
timestamp  timestamp[us, UTC]    when the sidecar received the request
model      string                the model name in the request path
protocol   string                ``http`` or ``grpc``
inputs     list<TENSOR>          the request's inputs, or null when inputs are not recorded
primary    RESPONSE              what the client got (from the primary, or the canary that served it)
shadows    list<RESPONSE>        one entry per shadow the request was mirrored to
trace_id   string                the client's trace (32 lowercase hex), null when not traced; added
                                 in December 2026: absent from older segments, read as null there
========== ===================== ===============================================================

``trace_id`` is the W3C trace id of the request's span when the sidecar traces it (see
`sidecar.spans`), else the one in the client's own ``traceparent`` header, so a record leads to its
trace in the tracing backend; null when neither is there.

RESPONSE is a struct: ``upstream`` (``primary``, ``canary`` or the shadow's name),
``model_version``, ``status`` (HTTP status; gRPC status codes are mapped to their HTTP
equivalents), ``latency_ms``, ``error`` (null on success, else ``timeout``,
``connection`` or the error message) and ``outputs`` (list<TENSOR>).

TENSOR is a struct: ``name``, ``datatype`` (v2), ``shape`` (list<int64>, with the batch
dimension), ``values`` (list<float64>: the numeric values flattened in row-major order;
BOOL as 0/1; null for BYTES) and ``strings`` (list<binary>: the BYTES values; null otherwise).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

TENSOR = pa.struct([
    ("name", pa.string()),
    ("datatype", pa.string()),
    ("shape", pa.list_(pa.int64())),
    ("values", pa.list_(pa.float64())),
    ("strings", pa.list_(pa.binary())),
])

RESPONSE = pa.struct([
    ("upstream", pa.string()),
    ("model_version", pa.string()),
    ("status", pa.int32()),
    ("latency_ms", pa.float64()),
    ("error", pa.string()),
    ("outputs", pa.list_(TENSOR)),
])

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("protocol", pa.string()),
        ("inputs", pa.list_(TENSOR)),
        ("primary", RESPONSE),
        ("shadows", pa.list_(RESPONSE)),
        ("trace_id", pa.string()),
    ],
    metadata={"shadowserve.records.schema": SCHEMA_VERSION},
)

SEGMENT_SUFFIX = ".parquet"  # finished segments; a segment being written has another suffix
