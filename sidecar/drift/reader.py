"""Reading recorded pairs: Parquet segments, column by column, in chunks, no per-row Python.

Only the Parquet leaves needed are read (``primary.outputs``, the shadows' outputs, inputs
when asked for). Nested lists are flattened through their offsets with numpy, so memory stays
at one chunk of Arrow data plus the numpy arrays handed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidecar.drift.errors import DriftError
from sidecar.records.schema import SEGMENT_SUFFIX

CHUNK_ROWS = 65_536
PRIMARY, INPUTS = "primary", "inputs"
Progress = Callable[[int], None]  # called with the rows just read


@dataclass(frozen=True)
class Window:
    """Which records to read: a directory of segments (or one file), one model, a time range."""

    path: Path
    model: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def describe(self) -> str:
        parts = [str(self.path)]
        if self.model:
            parts.append(f"model {self.model}")
        if self.since or self.until:
            parts.append(f"from {self.since.isoformat() if self.since else 'start'} "
                         f"to {self.until.isoformat() if self.until else 'end'}")
        return ", ".join(parts)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[i], starts[i] + lengths[i]), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


@dataclass
class TensorBlock:
    """All tensors of one name in a chunk: values flattened, one entry per tensor."""

    datatype: str
    rows: np.ndarray  # the record (row of the chunk) each tensor belongs to
    batch: np.ndarray  # prediction rows in each tensor
    starts: np.ndarray
    lengths: np.ndarray
    flat: np.ndarray  # float64 values, or decoded strings for BYTES
    width: int  # elements per prediction row; -1 when it varies (pooled)

    def take(self, index: np.ndarray | None = None) -> np.ndarray:
        """Values of the tensors at ``index`` (all by default): (predictions, width), or 1-D when pooled."""
        starts, lengths = (self.starts, self.lengths) if index is None else (self.starts[index], self.lengths[index])
        if (len(starts) and starts[-1] - starts[0] == int(lengths[:-1].sum())
                and np.all(np.diff(starts) == lengths[:-1])):
            values = self.flat[int(starts[0]):int(starts[-1] + lengths[-1])]  # contiguous: no copy
        else:
            values = self.flat[_ranges(starts, lengths)]
        return values if self.width < 0 else values.reshape(-1, max(self.width, 1))

    def prediction_rows(self, index: np.ndarray | None = None) -> np.ndarray:
        rows, batch = (self.rows, self.batch) if index is None else (self.rows[index], self.batch[index])
        return np.repeat(rows, batch)


@dataclass
class Chunk:
    """One chunk of records after filtering."""

    records: int
    timestamps: np.ndarray  # int64 microseconds since the epoch, UTC
    request_ids: np.ndarray | None
    trace_ids: np.ndarray | None = None  # None when the segments predate the column; entries None when not traced
    tensors: dict[str, dict[str, TensorBlock]] = field(default_factory=dict)  # source -> name -> block
    responses: dict[str, int] = field(default_factory=dict)  # source -> responses present
    failed: dict[str, int] = field(default_factory=dict)  # source -> responses with an error
    upstreams: set[str] = field(default_factory=set)  # every shadow name in the chunk

    def keys(self, rows: np.ndarray) -> RowKeys:
        """The request and trace ids of the records at ``rows`` (one entry per prediction row)."""
        return RowKeys(self.request_ids, self.trace_ids, rows)


@dataclass(frozen=True)
class RowKeys:
    """Which request (and trace) each prediction row came from, looked up only for the rows asked."""

    request_ids: np.ndarray | None
    trace_ids: np.ndarray | None
    rows: np.ndarray  # the record of each prediction row

    def request_id(self, index: np.ndarray) -> list[str | None]:
        return _pick(self.request_ids, self.rows[index])

    def trace_id(self, index: np.ndarray) -> list[str | None]:
        return _pick(self.trace_ids, self.rows[index])


ID_CHARS = 128  # request ids come from clients: a report shows at most this much of one


def _pick(values: np.ndarray | None, rows: np.ndarray) -> list[str | None]:
    if values is None:
        return [None] * len(rows)
    picked = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values[rows].tolist()]
    return [None if v is None else str(v)[:ID_CHARS] for v in picked]


def segment_files(path: Path) -> list[Path]:
    """The finished segments under ``path`` (a directory, searched recursively, or one file)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DriftError(f"no records at {path}: give a directory of {SEGMENT_SUFFIX} segments or a segment file")
    files = sorted(p for p in path.rglob(f"*{SEGMENT_SUFFIX}") if p.is_file())
    if not files:
        raise DriftError(f"no {SEGMENT_SUFFIX} segments in {path} (segments still being written are skipped)")
    return files


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _tensor_blocks(tensors: pa.StructArray, rows: np.ndarray) -> dict[str, TensorBlock]:
    if len(tensors) == 0:
        return {}
    fields = dict(zip([f.name for f in tensors.type], tensors.flatten(), strict=True))
    names = pc.dictionary_encode(fields["name"])
    codes = names.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    datatypes = fields["datatype"].fill_null("").to_numpy(zero_copy_only=False)
    values = fields["values"]
    lengths = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat: np.ndarray = pc.list_flatten(values).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    strings = fields.get("strings")
    shape = fields["shape"]
    shape_lengths = pc.list_value_length(shape).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    shape_flat = pc.list_flatten(shape).to_numpy(zero_copy_only=False)
    first = np.cumsum(shape_lengths) - shape_lengths
    batch = np.where(shape_lengths > 0, shape_flat[np.minimum(first, max(len(shape_flat) - 1, 0))]
                     if len(shape_flat) else 1, 1).astype(np.int64)
    blocks: dict[str, TensorBlock] = {}
    for code, name in enumerate(names.dictionary.to_pylist()):
        index = np.flatnonzero(codes == code)
        datatype = str(datatypes[index[0]]).upper()
        if datatype == "BYTES" and strings is not None:
            block_flat, block_lengths = _strings(strings.take(pa.array(index)))
            block_starts = np.cumsum(block_lengths) - block_lengths
        else:
            block_flat, block_lengths = flat, lengths[index]
            block_starts = (np.cumsum(lengths) - lengths)[index]
        n = batch[index]
        good = (n > 0) & (block_lengths % np.maximum(n, 1) == 0) & (block_lengths > 0)
        index, n, block_lengths, block_starts = index[good], n[good], block_lengths[good], block_starts[good]
        if len(index) == 0:
            continue
        widths = block_lengths // n
        width = int(widths[0]) if np.all(widths == widths[0]) else -1
        blocks[name] = TensorBlock(datatype, rows[index], n, block_starts, block_lengths, block_flat, width)
    return blocks


def _strings(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    lengths = pc.list_value_length(strings).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(strings).to_numpy(zero_copy_only=False)
    return flat.astype("S") if len(flat) else np.zeros(0, "S1"), lengths


def _responses(responses: pa.StructArray, rows: np.ndarray) -> tuple[dict[str, TensorBlock], int, int]:
    """Tensors of a response column; also how many responses there were and how many failed."""
    fields = dict(zip([f.name for f in responses.type], responses.flatten(), strict=True))
    valid = responses.is_valid().to_numpy(zero_copy_only=False)
    failed = int(fields["error"].is_valid().to_numpy(zero_copy_only=False).sum()) if "error" in fields else 0
    outputs = fields["outputs"]
    parents = pc.list_parent_indices(outputs).to_numpy(zero_copy_only=False)
    return _tensor_blocks(pc.list_flatten(outputs), rows[parents]), int(valid.sum()), failed


def _read_chunk(batch: pa.RecordBatch, shadows: tuple[str, ...], with_inputs: bool) -> Chunk:
    timestamps = batch.column("timestamp").cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    names = batch.schema.names
    ids = batch.column("request_id").to_numpy(zero_copy_only=False) if "request_id" in names else None
    traces = batch.column("trace_id").to_numpy(zero_copy_only=False) if "trace_id" in names else None
    chunk = Chunk(batch.num_rows, timestamps, ids, traces)
    rows = np.arange(batch.num_rows, dtype=np.int64)
    primary = batch.column("primary")
    if "upstream" in {f.name for f in primary.type}:
        # What the client got; a request the canary served holds the canary's answer: not the primary's.
        served = pc.invert(pc.equal(pc.struct_field(primary, "upstream"), "canary").fill_null(False))
        primary, rows = primary.filter(served), rows[served.to_numpy(zero_copy_only=False)]
    chunk.tensors[PRIMARY], chunk.responses[PRIMARY], chunk.failed[PRIMARY] = _responses(primary, rows)
    if shadows and "shadows" in batch.schema.names:
        column = batch.column("shadows")
        flat = pc.list_flatten(column)
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        upstream = pc.struct_field(flat, "upstream")
        chunk.upstreams.update(u for u in pc.unique(upstream).to_pylist() if u is not None)
        for name in shadows:
            mask = pc.equal(upstream, name).fill_null(False)
            picked = flat.filter(mask)
            chunk.tensors[name], chunk.responses[name], chunk.failed[name] = _responses(
                picked, parents[mask.to_numpy(zero_copy_only=False)])
    if with_inputs and "inputs" in batch.schema.names:
        column = batch.column("inputs")
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        chunk.tensors[INPUTS] = _tensor_blocks(pc.list_flatten(column), parents)
    return chunk


def _mask(batch: pa.RecordBatch, window: Window, seen: set[str]) -> pa.Array | None:
    models = batch.column("model")
    if window.model is None:
        seen.update(m for m in pc.unique(models).to_pylist() if m is not None)
        if len(seen) > 1:
            raise DriftError(f"the records hold {len(seen)} models ({', '.join(sorted(seen))}): pick one with --model")
    masks = [] if window.model is None else [pc.equal(models, window.model).fill_null(False)]
    stamps = batch.column("timestamp")
    if window.since is not None:
        masks.append(pc.greater_equal(stamps, pa.scalar(window.since, stamps.type)).fill_null(False))
    if window.until is not None:
        masks.append(pc.less(stamps, pa.scalar(window.until, stamps.type)).fill_null(False))
    if not masks:
        return None
    mask = masks[0]
    for more in masks[1:]:
        mask = pc.and_(mask, more)
    return mask


def read_chunks(window: Window, *, shadows: tuple[str, ...] = (), inputs: bool = False,
                request_ids: bool = False, chunk_rows: int = CHUNK_ROWS,
                progress: Progress | None = None) -> Iterator[Chunk]:
    """Chunks of the records in ``window``, with the primary's tensors and those of ``shadows``."""
    seen: set[str] = set()
    for path in segment_files(window.path):
        try:
            file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise DriftError(f"cannot read segment {path}: {error}") from error
        names = set(file.schema_arrow.names)
        missing = {"timestamp", "model", "primary"} - names
        if missing:
            raise DriftError(f"{path} is not a record segment: no column {', '.join(sorted(missing))}")
        columns = ["timestamp", "model", "primary.upstream", "primary.error", "primary.outputs"]
        if request_ids:  # the trace id too, in segments written since the records carry it
            columns += [c for c in ("request_id", "trace_id") if c in names]
        if shadows and "shadows" in names:
            columns += ["shadows.list.element.upstream", "shadows.list.element.error",
                        "shadows.list.element.outputs"]
        if inputs and "inputs" in names:
            columns.append("inputs")
        try:
            for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
                if progress:
                    progress(batch.num_rows)
                mask = _mask(batch, window, seen)
                if mask is not None:
                    batch = batch.filter(mask)
                if batch.num_rows:
                    yield _read_chunk(batch, shadows, inputs)
        except pa.ArrowException as error:
            raise DriftError(f"cannot read segment {path}: {error}") from error
