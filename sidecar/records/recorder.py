"""Records off the request path: a bounded queue, and one thread that decodes, compares and writes.

The event loop only hands over finished `Exchange` objects (raw bytes, no decoding);
when the queue holds ``queue_records`` records or ``queue_size`` bytes the record is
dropped and counted (``sidecar_records_lost_total{reason="queue_full"}``, or
``sidecar_live_drift_dropped_total`` for an exchange kept only for live drift). The
thread decodes requests and answers into tensors, feeds the agreement metrics (and the
canary analysis), the live drift windows, and appends to the segments when a record
directory is set and the request was mirrored: written through to disk within
``flush_secs`` (a kill -9 loses at most that), finished as Parquet by size or age.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config.file import RecordingConfig
from ..mirror.exchange import Answer, Exchange
from ..routing import sampled
from . import decode as tensors
from .compare import Agreement, Pairs
from .decode import Decoded, DecodeError, TensorValue
from .live import LiveDriftHub, clear_gauges
from .metrics import RecordMetrics
from .segments import FLUSH_SECS, SegmentWriter
from .tables import Record, ResponseRecord

log = logging.getLogger(__name__)

_STOP = object()
_NO_INPUTS = RecordingConfig()  # exchanges observed for live drift only: no inputs decoded


def _response(answer: Answer, protocol: str, shadow: bool, metrics: RecordMetrics | None) -> ResponseRecord:
    record = ResponseRecord(answer.upstream, None, answer.status, answer.latency_ms, answer.error, None)
    if answer.status != 200 or answer.body is None:
        if record.error is None and answer.body is not None and protocol == "http":
            record.error = tensors.http_error(answer.body) or f"HTTP {answer.status}"
        return record
    try:
        decoded = (tensors.http_response(answer.body, answer.header_length) if protocol == "http"
                   else tensors.grpc_response(answer.body))
    except DecodeError as exc:
        record.error = f"invalid response: {exc}"
        if shadow and metrics is not None:
            metrics.shadow_errors.labels(answer.upstream, "invalid_response").inc()
        return record
    record.model_version, record.outputs = decoded.model_version, decoded.tensors
    return record


def _request(exchange: Exchange) -> Decoded | None:
    try:
        if exchange.protocol == "grpc":
            return tensors.grpc_request(exchange.body)
        return tensors.http_request(exchange.body, exchange.header_length)
    except DecodeError:
        return None  # the primary answered the client's mistake; the record keeps no inputs


def to_record(exchange: Exchange, policy: RecordingConfig, metrics: RecordMetrics | None = None) -> Record:
    """Decode a finished exchange into a record, keeping the inputs as ``policy`` says."""
    keep = policy.inputs == "all" or (policy.inputs == "sampled"
                                      and sampled(exchange.key, policy.inputs_fraction, "inputs"))
    request: Decoded | None = None
    if keep or exchange.protocol == "grpc":
        request = _request(exchange)
        request_id = request.request_id if request is not None else None
    else:
        request_id = tensors.http_request_id(exchange.body, exchange.header_length)
    inputs: list[TensorValue] | None = None
    if keep and request is not None:
        if sum(t.nbytes for t in request.tensors) <= policy.max_input_bytes:
            inputs = request.tensors
        elif metrics is not None:
            metrics.inputs_skipped.inc()
    model = exchange.model or (request.model_name if request is not None and request.model_name else "")
    assert exchange.primary is not None
    return Record(request_id=request_id or exchange.request_id, timestamp=exchange.timestamp, model=model,
                  protocol=exchange.protocol, inputs=inputs,
                  primary=_response(exchange.primary, exchange.protocol, False, metrics),
                  shadows=[_response(a, exchange.protocol, True, metrics) for a in exchange.shadows],
                  trace_id=exchange.trace_id)


def _safely(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # the thread never dies; the writer counts its own losses
        log.exception("the record writer failed")


class Recorder:
    """The queue and the thread; `submit` is called on the event loop and never blocks."""

    def __init__(self, config: RecordingConfig, metrics: RecordMetrics, pairs: Pairs | None = None,
                 flush_secs: float = FLUSH_SECS) -> None:
        self.policy = config  # replaced on reload; the thread reads it per record
        self.drift: LiveDriftHub | None = None  # likewise; only the thread uses it
        self.metrics = metrics
        self.agreement = Agreement(metrics, pairs)
        self._max_records = config.queue_records
        self._max_bytes = config.queue_bytes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._writer = (SegmentWriter(config.dir, metrics, config.segment_records, config.segment_secs,
                                      config.max_bytes, flush_secs=flush_secs, finish_dead=False)
                        if config.dir is not None else None)
        self._thread = threading.Thread(target=self._run, name="sidecar-recorder", daemon=True)
        self._stopped = False
        metrics.recorder_queue.set_function(lambda: self._count)

    def start(self) -> None:
        self._thread.start()

    def submit(self, exchange: Exchange) -> bool:
        """Queue a finished exchange; False (and counted) when the queue is full or stopped."""
        size = exchange.size
        with self._lock:
            if self._stopped or self._count >= self._max_records or self._bytes + size > self._max_bytes:
                full = True
            else:
                full = False
                self._count += 1
                self._bytes += size
        if full:
            if exchange.record:
                self.metrics.records_lost.labels("shutdown" if self._stopped else "queue_full").inc()
            else:
                self.metrics.live_dropped.inc()
            return False
        self._queue.put((exchange, size))
        return True

    def _timeout(self, hub: LiveDriftHub | None) -> float | None:
        waits = [self._writer.seconds_to_due()] if self._writer is not None else []
        if hub is not None:
            waits.append(hub.seconds_to_refresh(time.monotonic()))
        present = [wait for wait in waits if wait is not None]
        return min(present) if present else None

    def _run(self) -> None:
        writer = self._writer
        if writer is not None:
            _safely(writer.finish_dead_writers)  # here, not on the event loop: it may take a while
        hub: LiveDriftHub | None = None
        while True:
            if self.drift is not hub:  # a new profile, or none: the old series go
                hub = self.drift
                clear_gauges(self.metrics)
            try:
                item = self._queue.get(timeout=self._timeout(hub))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                self._handle(item, hub)
            if writer is not None:
                _safely(writer.tick)
            if hub is not None:
                _safely(functools.partial(hub.refresh, time.monotonic()))
        if hub is not None:
            _safely(functools.partial(hub.refresh, time.monotonic(), force=True))
        if writer is not None:
            _safely(writer.close)

    def _handle(self, item: tuple[Exchange, int], hub: LiveDriftHub | None) -> None:
        exchange, size = item
        with self._lock:
            self._count -= 1
            self._bytes -= size
        try:
            record = to_record(exchange, self.policy if exchange.record else _NO_INPUTS, self.metrics)
            self.agreement.observe(record)
        except Exception:  # the thread never dies; the record is counted lost
            log.exception("cannot decode the record of request %s", exchange.key)
            if exchange.record:
                self.metrics.records_lost.labels("encode_error").inc()
            return
        if hub is not None:
            _safely(lambda: hub.observe(record))
        if exchange.record and self._writer is not None:
            _safely(lambda: self._writer.append(record, size))  # type: ignore[union-attr]

    def stop(self, timeout: float) -> bool:
        """Stop taking records, write what is queued and finish the segment; False if it ran out of time."""
        with self._lock:
            self._stopped = True
        self._queue.put(_STOP)
        if not self._thread.is_alive():
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:
                left = self._count + (self._writer.unflushed if self._writer is not None else 0)
            # what the open segment holds is on disk: the next start recovers it
            log.error("the recorder did not finish within %gs; %d record(s) lost", timeout, left)
            self.metrics.records_lost.labels("shutdown").inc(left)
            return False
        return True
