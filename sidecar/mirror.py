"""Bounded, fire-and-forget dispatch of mirrored copies to shadows.

A copy runs as its own task beside the primary request, which never awaits it. Each
shadow has its own connection pool, its own timeout and at most ``max_in_flight`` copies
pending; past that a copy is dropped and counted, as is a body over ``max_body_size``.
Whatever a shadow does (refuse, hang, fail, answer garbage, crawl), it only ever
produces an `Answer` for the record and a count on /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp
import grpc
from multidict import CIMultiDict

from .config import ShadowConfig
from .exchange import CANCELLED, CONNECTION, GRPC_TO_HTTP, TIMEOUT, Answer, Exchange
from .pool import BodyTooLarge
from .metrics import Metrics
from .routing import sampled
from .upstream import HEADER_LENGTH, HttpUpstream, grpc_channel, shadow_headers, shadow_metadata

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
FAILURES_TO_REST = 5
MAX_REST_SECS = 30.0


class ResponseTooLarge(Exception):
    pass


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """A response body, refusing one over ``cap`` bytes without reading all of it."""
    if response.content_length is not None and response.content_length > cap:
        raise ResponseTooLarge(f"response of {response.content_length} bytes is over max_body_size {cap}")
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > cap:
            raise ResponseTooLarge(f"response is over max_body_size {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Shadow:
    """One shadow: its configuration, connection pools and the copies it has in flight."""

    def __init__(self, config: ShadowConfig, metrics: Metrics) -> None:
        self.config = config
        self.name = config.name
        self.metrics = metrics
        self.http = (HttpUpstream(config.http, config.timeout_secs, min(config.timeout_secs, 5.0),
                                  max(config.max_in_flight, 1)) if config.http else None)
        self.grpc = grpc_channel(config.grpc) if config.grpc else None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._failures = 0  # connection failures in a row
        self._resting_until = 0.0  # monotonic time before which copies are skipped as unreachable
        self._in_flight = metrics.shadow_in_flight.labels(self.name)
        self._sends = {p: metrics.shadow_sends.labels(self.name, p) for p in ("http", "grpc")}
        self._duration = metrics.shadow_duration.labels(self.name)

    def admit(self, protocol: str, body_size: int | None) -> bool:
        """Whether a sampled copy may go now; every refusal is counted."""
        reason = None
        if (self.http if protocol == "http" else self.grpc) is None:
            reason = "no_upstream"
        elif self.closing:
            reason = "stopping"
        elif body_size is None:
            reason = "streamed"
        elif body_size > self.config.max_body_bytes:
            reason = "too_large"
        elif self._resting_until and time.monotonic() < self._resting_until:
            reason = "unreachable"
        if reason is not None:
            self.metrics.shadow_skipped.labels(self.name, reason).inc()
            return False
        if len(self.tasks) >= self.config.max_in_flight:
            self.metrics.shadow_drops.labels(self.name).inc()
            return False
        return True

    def _start(self, protocol: str, send: Callable[[], asyncio.Future[Answer]], exchange: Exchange) -> None:
        task = asyncio.get_running_loop().create_task(self._run(protocol, send, exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, protocol: str, send: Callable[[], asyncio.Future[Answer]], exchange: Exchange) -> None:
        self._sends[protocol].inc()
        self._in_flight.inc()
        start = time.perf_counter()
        answer: Answer | None = None
        try:
            answer = await send()
        except asyncio.CancelledError:
            self.metrics.shadow_cancelled.labels(self.name).inc()
            answer = Answer(self.name, None, (time.perf_counter() - start) * 1000, CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - a shadow never fails anything but its own copy
            log.debug("shadow %s: %r", self.name, exc)
            answer = Answer(self.name, None, (time.perf_counter() - start) * 1000, f"{type(exc).__name__}: {exc}")
        finally:
            self._in_flight.dec()
            if answer is not None:
                self._count(answer)
                exchange.add_shadow(answer)

    def _track(self, answer: Answer) -> None:
        """Back off from a shadow that cannot be reached, as Envoy's outlier detection does.

        After ``FAILURES_TO_REST`` connection failures in a row, copies are skipped (counted
        as ``unreachable``) for half a second, doubling up to 30 s while it stays down;
        the first copy after a rest probes it, and any answer ends the back-off.
        """
        if answer.error != CONNECTION:
            if answer.status is not None and self._failures:
                self._failures, self._resting_until = 0, 0.0
            return
        self._failures += 1
        if self._failures >= FAILURES_TO_REST:
            rest = min(MAX_REST_SECS, 0.5 * 2 ** (self._failures - FAILURES_TO_REST))
            if self._failures == FAILURES_TO_REST:
                log.warning("shadow %s: %d connection failures in a row; copies skipped while it rests",
                            self.name, self._failures)
            self._resting_until = time.monotonic() + rest

    def _count(self, answer: Answer) -> None:
        self._track(answer)
        m, name = self.metrics, self.name
        if answer.latency_ms is not None and answer.status is not None:
            self._duration.observe(answer.latency_ms / 1000)
        if answer.error == TIMEOUT:
            m.shadow_timeouts.labels(name).inc()
        elif answer.error == CANCELLED:
            pass  # counted where it was cancelled
        elif answer.status == 200 and answer.error is None:
            m.shadow_successes.labels(name).inc()  # a body that is no v2 response is counted when decoded
        elif answer.status is not None:
            m.shadow_errors.labels(name, "status").inc()
        else:
            m.shadow_errors.labels(name, "connection" if answer.error == CONNECTION else "invalid_response").inc()

    def send_http(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes,
                  exchange: Exchange) -> None:
        http = self.http
        assert http is not None
        copy = shadow_headers(headers, self.config.headers)
        cap = self.config.max_body_bytes

        async def send() -> Answer:
            start = http.begin()
            headers: Mapping[str, str]
            try:
                if http.pool is not None:
                    resp = await http.pool.request(method, http.target(raw_path), copy.items(), body, http.timeout)
                    status, headers, data = resp.status, resp.headers, await resp.read(cap)
                else:
                    async with http.session.request(method, http.url(raw_path), data=body, headers=copy,
                                                    allow_redirects=False) as response:
                        status, headers, data = response.status, response.headers, await read_capped(response, cap)
                length = headers.get(HEADER_LENGTH)
                return Answer(self.name, status, (time.perf_counter() - start) * 1000, None, data,
                              int(length) if length and length.isdigit() else None)
            except asyncio.TimeoutError:
                return Answer(self.name, None, (time.perf_counter() - start) * 1000, TIMEOUT)
            except (aiohttp.ClientError, OSError, ResponseTooLarge, BodyTooLarge) as exc:
                log.debug("shadow %s: %r", self.name, exc)
                error = CONNECTION if isinstance(exc, (aiohttp.ClientError, OSError)) else str(exc)
                return Answer(self.name, None, (time.perf_counter() - start) * 1000, error)
            finally:
                http.end()

        self._start("http", send, exchange)  # type: ignore[arg-type]

    def send_grpc(self, method: str, body: bytes, metadata: Metadata, exchange: Exchange) -> None:
        channel = self.grpc
        assert channel is not None
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = channel.unary_unary(method)
        copy = shadow_metadata(metadata, self.config.headers)
        timeout = self.config.timeout_secs

        async def send() -> Answer:
            start = time.perf_counter()
            try:
                response = await call(body, metadata=copy, timeout=timeout)
                return Answer(self.name, 200, (time.perf_counter() - start) * 1000, None, response)
            except grpc.aio.AioRpcError as exc:
                elapsed = (time.perf_counter() - start) * 1000
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return Answer(self.name, None, elapsed, TIMEOUT)
                if code == grpc.StatusCode.UNAVAILABLE and not exc.trailing_metadata():
                    return Answer(self.name, None, elapsed, CONNECTION)  # never reached a server
                return Answer(self.name, GRPC_TO_HTTP.get(code.name, 500), elapsed, exc.details() or code.name)

        self._start("grpc", send, exchange)  # type: ignore[arg-type]

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


def choose_shadows(shadows: Sequence[Shadow], key: str, protocol: str, body_size: int | None) -> list[Shadow]:
    """The shadows that get a copy of this request: sampled by key, then admitted (or counted)."""
    return [s for s in shadows if sampled(key, s.config.fraction) and s.admit(protocol, body_size)]


def choose_copies(shadows: Sequence[Shadow], copies: Shadow | None, key: str, protocol: str,
                  body_size: int | None) -> list[Shadow]:
    """The shadows that get a copy, and ``copies`` (the primary, for a canary-served request) when sampled."""
    chosen = choose_shadows(shadows, key, protocol, body_size) if shadows else []
    if copies is not None and sampled(key, copies.config.fraction, "copies") and copies.admit(protocol, body_size):
        chosen.append(copies)
    return chosen
