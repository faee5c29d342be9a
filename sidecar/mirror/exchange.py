"""One mirrored (or observed) request while its answers arrive: the served one and one per copy sent.

Lives on the event loop and does no decoding: it holds the raw bytes, and when the last
answer is in it hands itself to the recorder, which decodes it on its own thread. The
served answer (`Exchange.primary`, what the client got) comes from the primary or the
canary; the copies from the shadows and, for canary-served requests, from the primary.
An exchange with no copies (``record`` false) only feeds the live drift gauges.
"""

from __future__ import annotations

from collections.abc import Callable

TIMEOUT, CONNECTION, CANCELLED = "timeout", "connection", "cancelled"
TOO_LARGE = "too_large"  # a shadow's answer over its max_response_size
OVER_BUDGET = "memory_budget"  # a shadow's answer the sidecar's shadow memory budget had no room for


class Answer:
    """An upstream's raw answer: ``status`` is None when no response came (then ``error`` says why)."""

    __slots__ = ("upstream", "status", "latency_ms", "error", "body", "header_length")

    def __init__(self, upstream: str, status: int | None, latency_ms: float | None, error: str | None = None,
                 body: bytes | None = None, header_length: int | None = None) -> None:
        self.upstream = upstream
        self.status = status
        self.latency_ms = latency_ms
        self.error = error
        self.body = body
        self.header_length = header_length  # HTTP: Inference-Header-Content-Length of a binary body

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else 0

    def __repr__(self) -> str:
        return f"Answer({self.upstream!r}, status={self.status}, error={self.error!r})"


class Exchange:
    """A request, the primary's answer and the shadows' answers, complete when all are in."""

    __slots__ = ("key", "request_id", "timestamp", "model", "protocol", "body", "header_length", "primary", "shadows",
                 "record", "trace_id", "_pending", "_on_complete")

    def __init__(self, key: str, request_id: str, timestamp: float, model: str, protocol: str, body: bytes,
                 header_length: int | None, on_complete: Callable[[Exchange], object], record: bool = True,
                 trace_id: str | None = None) -> None:
        self.key = key  # what sampling hashed: the sampling header, else the v2 id, else request_id
        self.request_id = request_id  # x-request-id as forwarded (the client's, or one the sidecar assigned)
        self.timestamp = timestamp
        self.model = model
        self.protocol = protocol
        self.body = body
        self.header_length = header_length
        self.primary: Answer | None = None
        self.shadows: list[Answer] = []
        self.record = record  # False: observed for live drift only, never written
        self.trace_id = trace_id  # the client's trace (32 lowercase hex), None when not traced
        self._pending = 1  # the primary; expect() adds the shadows
        self._on_complete = on_complete

    def expect(self, shadows: int) -> None:
        """Count shadow answers to wait for (call before any of them can arrive)."""
        self._pending += shadows

    @property
    def size(self) -> int:
        """Bytes held: what the recorder's queue accounts for."""
        return len(self.body) + (self.primary.size if self.primary else 0) + sum(a.size for a in self.shadows)

    def set_primary(self, answer: Answer) -> None:
        if self.primary is None:
            self.primary = answer
            self._arrived()

    def add_shadow(self, answer: Answer) -> None:
        self.shadows.append(answer)
        self._arrived()

    def _arrived(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._on_complete(self)
