"""Bounded, fire-and-forget dispatch of mirrored copies to shadows.

A copy runs as its own task beside the primary request, which never awaits it. Each
shadow has its own connection pool, its own timeout and at most ``max_in_flight`` copies
pending; past that a copy is dropped and counted, as is a body over ``max_body_size``.
A shadow's answer is bounded too: ``max_response_size`` bytes (4 MiB by default, far
below the request cap: a shadow answers one inference) within ``timeout``, which covers
the whole copy, body included. Every copy holds its request body and the response bytes
read so far against the sidecar's `MemoryBudget`; a copy the budget has no room for is
not sent. Whatever a shadow does (refuse, hang, reset, answer garbage, crawl, stream
forever), it only ever produces an `Answer` for the record and a count on /metrics, and a
shadow that keeps failing is rested (`Shadow._track`). With tracing on, each copy is a CLIENT
span (`sidecar.spans.RequestSpan.shadow`) made and ended by the copy's task, and a copy not sent
is an event on the request's span.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from multidict import CIMultiDict

from inference_protocol.errors import GRPC_TO_HTTP
from inference_protocol.headers import HEADER_LENGTH

from ..config.file import ShadowConfig
from ..routing import sampled
from ..upstream.client import HttpUpstream, TooLarge, grpc_channel
from ..upstream.headers import Metadata, shadow_headers, shadow_metadata
from .budget import Held, MemoryBudget
from .exchange import CANCELLED, CONNECTION, OVER_BUDGET, TIMEOUT, TOO_LARGE, Answer, Exchange
from .metrics import MirrorMetrics

if TYPE_CHECKING:
    from ..spans import CallSpan, RequestSpan

Send = Callable[["CallSpan | None"], Awaitable[Answer]]  # sends one copy; its span (tracing on) goes with it

log = logging.getLogger(__name__)


FAILURES_TO_REST = 5
FIRST_REST_SECS = 0.5
MAX_REST_SECS = 30.0
# Failures that rest a shadow: it cannot be reached, does not answer in time, or answers
# more than it may (reading it costs the event loop, which the primary's requests share).
RESTING_ERRORS = frozenset({CONNECTION, TIMEOUT, TOO_LARGE})


class Shadow:
    """One shadow: its configuration, connection pools and the copies it has in flight."""

    def __init__(self, config: ShadowConfig, metrics: MirrorMetrics, budget: MemoryBudget | None = None) -> None:
        self.config = config
        self.name = config.name
        self.metrics = metrics
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.http = (HttpUpstream(config.http, config.timeout_secs, min(config.timeout_secs, 5.0),
                                  max(config.max_in_flight, 1)) if config.http else None)
        self.grpc = grpc_channel(config.grpc, config.max_response_bytes) if config.grpc else None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._failures = 0  # failures (RESTING_ERRORS) in a row
        self._resting_until = 0.0  # monotonic time before which copies are skipped as unreachable
        self._probing = False  # after a rest: one copy is out to see whether the shadow is back
        self._in_flight = metrics.shadow_in_flight.labels(self.name)
        self._sends = {p: metrics.shadow_sends.labels(self.name, p) for p in ("http", "grpc")}
        self._duration = metrics.shadow_duration.labels(self.name)

    def skip(self, reason: str, span: RequestSpan | None = None) -> None:
        """Count a copy this shadow does not get, for ``reason`` (an event on the request's ``span``)."""
        self.metrics.shadow_skipped.labels(self.name, reason).inc()
        if span is not None:
            span.skipped(self.name, reason)

    def admit(self, protocol: str, body_size: int | None, span: RequestSpan | None = None) -> bool:
        """Whether a sampled copy may go now; every refusal is counted (and an event on ``span``).

        An admitted copy holds ``body_size`` bytes of the memory budget until it ends: the
        caller sends it (`send_http`, `send_grpc`) at once.
        """
        reason = None
        if (self.http if protocol == "http" else self.grpc) is None:
            reason = "no_upstream"
        elif self.closing:
            reason = "stopping"
        elif body_size is None:
            reason = "streamed"
        elif body_size > self.config.max_body_bytes:
            reason = "too_large"
        elif self._resting_until and (time.monotonic() < self._resting_until or self._probing):
            reason = "unreachable"
        if reason is not None:
            self.skip(reason, span)
            return False
        assert body_size is not None
        if len(self.tasks) >= self.config.max_in_flight:
            self.metrics.shadow_drops.labels(self.name).inc()
            if span is not None:
                span.skipped(self.name, "max_in_flight")
            return False
        if not self.budget.take(body_size):
            self.skip("memory_budget", span)
            return False
        if self._resting_until:
            self._probing = True  # this copy is the probe; the others wait for its answer
        return True

    def _start(self, protocol: str, send: Send, exchange: Exchange, held: Held, parent: RequestSpan | None) -> None:
        # the copy's span is made by its task, off the primary's path, from the time it was sent
        started = time.time_ns() if parent is not None else 0
        task = asyncio.get_running_loop().create_task(self._run(protocol, send, exchange, held, parent, started))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: held.release())  # also when cancelled before it ever ran

    async def _run(self, protocol: str, send: Send, exchange: Exchange, held: Held, parent: RequestSpan | None,
                   started_ns: int) -> None:
        self._sends[protocol].inc()
        self._in_flight.inc()
        start = time.perf_counter()
        answer: Answer | None = None
        span = parent.shadow(self.name, started_ns) if parent is not None else None
        try:
            answer = await send(span)
        except asyncio.CancelledError:
            self.metrics.shadow_cancelled.labels(self.name).inc()
            answer = Answer(self.name, None, (time.perf_counter() - start) * 1000, CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - a shadow never fails anything but its own copy
            log.debug("shadow %s: %r", self.name, exc)
            answer = Answer(self.name, None, (time.perf_counter() - start) * 1000, f"{type(exc).__name__}: {exc}")
        finally:
            held.release()
            self._in_flight.dec()
            if answer is not None:
                self._count(answer)
                exchange.add_shadow(answer)
            if span is not None:
                span.end_answer(answer, protocol)

    def _track(self, answer: Answer) -> None:
        """Back off from a shadow that keeps failing, as Envoy's outlier detection does.

        After ``FAILURES_TO_REST`` failures in a row (it cannot be reached, times out, or
        answers over ``max_response_size``), copies are skipped (counted as ``unreachable``)
        for half a second, doubling up to 30 s while it keeps failing. When a rest ends,
        one copy probes it while the others are still skipped, however many requests
        arrive at once; an answer within the limits ends the back-off.
        """
        if answer.error not in RESTING_ERRORS:
            if answer.status is None:
                self._probing = False  # no verdict (cancelled, over the budget): the next copy probes
            elif self._failures or self._resting_until:
                if self._resting_until:
                    log.info("shadow %s: answering again; copies resume", self.name)
                self._failures, self._resting_until, self._probing = 0, 0.0, False
            return
        self._failures += 1
        if self._failures >= FAILURES_TO_REST:
            doublings = min(self._failures - FAILURES_TO_REST, 6)  # capped: 2 ** n of a long outage overflows
            rest = min(MAX_REST_SECS, FIRST_REST_SECS * 2 ** doublings)
            if self._failures == FAILURES_TO_REST:
                log.warning("shadow %s: %d failures in a row (%s); copies skipped while it rests",
                            self.name, self._failures, answer.error)
            self._resting_until = time.monotonic() + rest
            self._probing = False

    def _count(self, answer: Answer) -> None:
        self._track(answer)
        m, name = self.metrics, self.name
        if answer.latency_ms is not None and answer.status is not None:
            self._duration.observe(answer.latency_ms / 1000)
        if answer.error == TIMEOUT:
            m.shadow_timeouts.labels(name).inc()
        elif answer.error in (TOO_LARGE, OVER_BUDGET):
            m.shadow_errors.labels(name, answer.error).inc()
        elif answer.error == CANCELLED:
            pass  # counted where it was cancelled
        elif answer.status == 200 and answer.error is None:
            m.shadow_successes.labels(name).inc()  # a body that is no v2 response is counted when decoded
        elif answer.status is not None:
            m.shadow_errors.labels(name, "status").inc()
        else:
            m.shadow_errors.labels(name, "connection" if answer.error == CONNECTION else "invalid_response").inc()

    def send_http(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes,
                  exchange: Exchange, parent: RequestSpan | None = None) -> None:
        """Send an admitted copy (a child span of ``parent`` when tracing is on); returns at once."""
        http = self.http
        assert http is not None
        copy = shadow_headers(headers, self.config.headers)
        cap = self.config.max_response_bytes
        held = Held(self.budget, len(body))  # taken by admit()

        async def send(span: CallSpan | None) -> Answer:
            if span is not None:
                span.headers(copy)
            start = http.begin()
            try:
                # One deadline for the whole copy: connecting, the head and every byte of the body.
                response = await http.send(method, raw_path, copy.items(), body)
                data = await response.read(cap, held.take)
                length = response.headers.get(HEADER_LENGTH)
                return Answer(self.name, response.status, (time.perf_counter() - start) * 1000, None, data,
                              int(length) if length and length.isascii() and length.isdigit() else None)
            except asyncio.TimeoutError:
                return Answer(self.name, None, (time.perf_counter() - start) * 1000, TIMEOUT)
            except TooLarge as exc:
                log.debug("shadow %s: %s", self.name, exc)
                error = OVER_BUDGET if exc.over_budget else TOO_LARGE
                return Answer(self.name, None, (time.perf_counter() - start) * 1000, error)
            except (OSError, ValueError) as exc:  # UpstreamError is an OSError
                log.debug("shadow %s: %r", self.name, exc)
                return Answer(self.name, None, (time.perf_counter() - start) * 1000, CONNECTION)
            finally:
                http.end()

        self._start("http", send, exchange, held, parent)

    def send_grpc(self, method: str, body: bytes, metadata: Metadata, exchange: Exchange,
                  parent: RequestSpan | None = None) -> None:
        """Send an admitted copy of a unary call (a child span of ``parent`` when tracing is on)."""
        channel = self.grpc
        assert channel is not None
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = channel.unary_unary(method)
        copy = shadow_metadata(metadata, self.config.headers)
        timeout = self.config.timeout_secs
        held = Held(self.budget, len(body))  # taken by admit()

        async def send(span: CallSpan | None) -> Answer:
            start = time.perf_counter()
            try:
                # The channel refuses an answer over max_response_size before holding it.
                response = await call(body, metadata=copy if span is None else span.metadata(copy), timeout=timeout)
                elapsed = (time.perf_counter() - start) * 1000
                if not held.take(len(response)):
                    return Answer(self.name, None, elapsed, OVER_BUDGET)
                return Answer(self.name, 200, elapsed, None, response)
            except grpc.aio.AioRpcError as exc:
                elapsed = (time.perf_counter() - start) * 1000
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return Answer(self.name, None, elapsed, TIMEOUT)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or ""):
                    return Answer(self.name, None, elapsed, TOO_LARGE)  # the channel's receive limit
                if code == grpc.StatusCode.UNAVAILABLE and not exc.trailing_metadata():
                    return Answer(self.name, None, elapsed, CONNECTION)  # never reached a server
                return Answer(self.name, GRPC_TO_HTTP.get(code.name, 500), elapsed, exc.details() or code.name)

        self._start("grpc", send, exchange, held, parent)

    async def close(self, grace: float) -> None:
        """Stop taking copies, let pending ones finish for ``grace`` seconds, cancel the rest, close pools."""
        self.closing = True
        pending = set(self.tasks)
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self.grpc is not None:
            await self.grpc.close()


def choose_shadows(shadows: Sequence[Shadow], key: str, protocol: str, body_size: int | None,
                   span: RequestSpan | None = None) -> list[Shadow]:
    """The shadows that get a copy of this request: sampled by key, then admitted (or counted)."""
    return [s for s in shadows if sampled(key, s.config.fraction) and s.admit(protocol, body_size, span)]


def choose_copies(shadows: Sequence[Shadow], copies: Shadow | None, key: str, protocol: str,
                  body_size: int | None, span: RequestSpan | None = None) -> list[Shadow]:
    """The shadows that get a copy, and ``copies`` (the primary, for a canary-served request) when sampled."""
    chosen = choose_shadows(shadows, key, protocol, body_size, span) if shadows else []
    if copies is not None and sampled(key, copies.config.fraction, "copies") and copies.admit(protocol, body_size,
                                                                                             span):
        chosen.append(copies)
    return chosen
