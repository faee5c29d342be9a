"""The HTTP proxy: every request to the primary, or to the canary; v2 infer requests also mirrored to shadows.

The client gets the serving upstream's status, headers (less hop-by-hop ones) and body.
Inference requests (``POST /v2/models/{model}[/versions/{v}]/infer``) go to the canary for
its weight's share of sticky keys (`sidecar.routing.split`); a canary that fails one (no
answer, 429 or 5xx) is answered by retrying once on the primary, counted. Bodies up to
the largest ``max_body_size`` are read whole, which mirroring and retrying need; larger
ones and bodies of unknown length stream to the upstream and are neither mirrored nor
retried. Responses of requests nobody mirrors stream back when they are large or of
unknown length. Upstream failures answer like Envoy: 503 when the upstream cannot be
reached, 504 when it times out, with a v2 error body.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from inference_protocol.headers import HEADER_LENGTH

from ..mirror.exchange import CANCELLED, CONNECTION, TIMEOUT, Answer, Exchange
from .guard import ConnectionGuard
from .health import Health
from .metrics import ProxyMetrics
from ..mirror.shadow import choose_copies
from ..canary.controller import Controller
from ..routing import CANARY, PRIMARY, infer_target, retry_on_primary, sampled, split, sticky_key, upstream_failed
from .upstreams import MIN_BUFFER, CanaryUpstream, Runtime
from ..records.decode import http_request_id
from ..upstream.client import HttpUpstream, forward_headers, response_headers

JSON = "application/json"
REQUEST_ID = "x-request-id"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _header_length(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class _Reply:
    """One upstream's answer, buffered: what the client gets unless a retry replaces it."""

    __slots__ = ("answer", "out", "upstream_secs")

    def __init__(self, answer: Answer, out: web.Response, upstream_secs: float) -> None:
        self.answer, self.out, self.upstream_secs = answer, out, upstream_secs


class HttpProxy:
    """The handler of the HTTP listener (an aiohttp low-level server: no router in the hop)."""

    def __init__(self, runtime: Callable[[], Runtime], metrics: ProxyMetrics, submit: Callable[[Exchange], object],
                 health: Health, canary: Controller) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self._submit = submit
        self.health = health
        self.canary = canary
        self.guard: ConnectionGuard | None = None  # the listener's deadlines, told where each request starts and ends
        self.in_flight = 0  # the drain waits for it to reach 0
        self._requests: dict[tuple[str, int], Any] = {}
        self._request_duration = metrics.request_duration.labels("http")
        self._hop = metrics.hop_duration.labels("http")
        self._upstream_duration = {name: metrics.upstream_duration.labels(name, "http") for name in (PRIMARY, CANARY)}
        self._retries = metrics.canary_retries.labels("http")

    def request_factory(self, client_max_size: int) -> Callable[..., web.BaseRequest]:
        """Requests for aiohttp's low-level server, with our own cap on a body read whole."""
        loop = asyncio.get_running_loop()

        def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=client_max_size)
        return make

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        guard = self.guard
        if guard is not None:
            guard.head_received(request)
        try:
            path = request.path
            if path == "/healthz":
                return _json({"live": True})
            if path == "/readyz":
                ready, reason = await self.health.ready()
                return _json({"ready": ready, "reason": reason}, 200 if ready else 503)
            self.in_flight += 1
            try:
                return await self.forward(request)
            finally:
                self.in_flight -= 1
        finally:
            if guard is not None:
                guard.request_done(request)

    def _count(self, upstream: str, status: int) -> None:
        counter = self._requests.get((upstream, status))
        if counter is None:
            counter = self._requests[(upstream, status)] = self.metrics.requests.labels(upstream, "http", str(status))
        counter.inc()

    def _sticky(self, canary: CanaryUpstream, request: web.BaseRequest, body: bytes | None) -> str:
        header = request.headers.get(canary.header) if canary.header else None
        request_id = request.headers.get(REQUEST_ID)
        if header is None and request_id is None and body is not None:
            request_id = http_request_id(body, _header_length(request.headers.get(HEADER_LENGTH)))
        return sticky_key(header, request_id, "") or uuid.uuid4().hex

    def _exchange(self, rt: Runtime, request: web.BaseRequest, headers: Any, body: bytes | None, model: str,
                  served: str) -> Exchange | None:
        """Send the copies (shadows; the primary's when the canary serves); an exchange collects the answers."""
        header_length = _header_length(request.headers.get(HEADER_LENGTH))
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        key = request.headers.get(rt.sample_header)
        if key is None and rt.needs_key and body is not None:
            key = http_request_id(body, header_length)
        key = key or request_id
        size = len(body) if body is not None else request.content_length  # None: unknown (chunked)
        copies = rt.canary.copies if served == CANARY and rt.canary is not None else None
        chosen = choose_copies(rt.shadows, copies, key, "http", size)
        if body is None:
            return None
        if not chosen and not (rt.observe_fraction and sampled(key, rt.observe_fraction, "drift")):
            return None
        if chosen and REQUEST_ID not in headers:
            headers[REQUEST_ID] = request_id  # as Envoy does, so the upstreams' logs correlate
        exchange = Exchange(key, request_id, time.time(), model, "http", body, header_length, self._submit,
                            record=bool(chosen))
        exchange.expect(len(chosen))
        for shadow in chosen:
            shadow.send_http(request.method, request.raw_path, headers, body, exchange)
        return exchange

    async def forward(self, request: web.BaseRequest) -> web.StreamResponse:
        received = time.perf_counter()
        rt = self._runtime()
        headers = forward_headers(request.headers)
        length = request.content_length
        body: bytes | None = None
        payload: Any = None
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The client waits for this before it sends the body (curl for up to a second).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not request.body_exists:
            body = b""
        elif length is not None and length <= rt.buffer_limit:
            body = payload = await request.read()
        else:
            payload = request.content  # streamed through, never held whole
            if length is not None:
                headers["Content-Length"] = str(length)
        target = infer_target(request.path) if request.method == "POST" else None
        served, upstream = PRIMARY, rt.primary
        canary, weight = rt.canary, self.canary.weight
        if target is not None and canary is not None and canary.http is not None and weight > 0:
            if split(self._sticky(canary, request, body), weight) == CANARY:
                served, upstream = CANARY, canary.http
        exchange = None
        if target is not None and (rt.shadows or served == CANARY or rt.observe_fraction):
            exchange = self._exchange(rt, request, headers, body, target[0], served)
        reply: web.StreamResponse | _Reply | None = None
        upstream_secs = 0.0  # a failed canary attempt is upstream time too
        try:
            reply = await self._send(request, upstream, served, headers, body, payload, target is not None,
                                     exchange is None, retry=served == CANARY and body is not None, received=received)
            if isinstance(reply, _Reply) and retry_on_primary(served, reply.answer.status, idempotent=True,
                                                              body_held=body is not None):
                self._retries.inc()
                served, upstream_secs, reply = PRIMARY, reply.upstream_secs, None  # a cancelled retry: not the canary's
                reply = await self._send(request, rt.primary, PRIMARY, headers, body, payload, True, exchange is None,
                                         retry=False, received=received)
        finally:
            if exchange is not None:
                answer = reply.answer if isinstance(reply, _Reply) else None
                exchange.set_primary(answer or Answer(served, None, None, CANCELLED))
        if not isinstance(reply, _Reply):
            return reply  # streamed back, counted
        out = reply.out
        self._count(served, out.status)
        done = time.perf_counter()
        self._request_duration.observe(done - received)
        self._hop.observe(max(0.0, (done - received) - upstream_secs - reply.upstream_secs))
        return out

    def _observe(self, name: str, infer: bool, seconds: float, status: int | None) -> None:
        if infer:
            self._upstream_duration[name].observe(seconds)
            if self.canary.observing:
                self.canary.observe(name, seconds, upstream_failed(status))

    async def _send(self, request: web.BaseRequest, upstream: HttpUpstream, name: str, headers: Any,
                    body: bytes | None, payload: Any, infer: bool, may_stream: bool, *, retry: bool,
                    received: float) -> web.StreamResponse | _Reply:
        """One attempt on one upstream; a large answer nobody mirrors streams to the client at once."""
        sent = upstream.begin()
        reason: str | None
        upstream_headers: Mapping[str, str]
        try:
            if upstream.pool is not None and body is not None:
                resp = await upstream.pool.request(request.method, upstream.target(request.raw_path),
                                                   headers.items(), body, upstream.timeout)
                status, reason, upstream_headers, length = resp.status, resp.reason, resp.headers, resp.content_length
                if may_stream and (length is None or length > MIN_BUFFER) and not (retry and upstream_failed(status)):
                    self._observe(name, infer, time.perf_counter() - sent, status)
                    return await self._stream(request, name, status, reason, upstream_headers, length,
                                              resp.iter_chunks(), received)
                data = await resp.read()
            else:
                async with upstream.session.request(request.method, upstream.url(request.raw_path), data=payload,
                                                    headers=headers, allow_redirects=False) as streamed:
                    status, reason, upstream_headers = streamed.status, streamed.reason, streamed.headers
                    length = streamed.content_length
                    if may_stream and (length is None or length > MIN_BUFFER) and not (
                            retry and upstream_failed(status)):
                        self._observe(name, infer, time.perf_counter() - sent, status)
                        return await self._stream(request, name, status, reason, upstream_headers, length,
                                                  streamed.content.iter_any(), received)
                    data = await streamed.read()
            elapsed = time.perf_counter() - sent
            answer = Answer(name, status, elapsed * 1000, None, data,
                            _header_length(upstream_headers.get(HEADER_LENGTH)))
            out = web.Response(status=status, reason=reason, headers=response_headers(upstream_headers), body=data)
        except asyncio.TimeoutError:
            elapsed = time.perf_counter() - sent
            answer = Answer(name, None, elapsed * 1000, TIMEOUT)
            out = _json({"error": f"upstream request timeout: the {name} did not answer within "
                                  f"{upstream.timeout:g}s"}, 504)
        except (aiohttp.ClientError, OSError) as exc:
            elapsed = time.perf_counter() - sent
            answer = Answer(name, None, elapsed * 1000, CONNECTION)
            out = _json({"error": f"upstream connect error or disconnect/reset: the {name} at "
                                  f"{upstream.base_url} ({type(exc).__name__}: {exc})"}, 503)
        finally:
            upstream.end()
        self._observe(name, infer, elapsed, answer.status)
        return _Reply(answer, out, elapsed)

    async def _stream(self, request: web.BaseRequest, name: str, status: int, reason: str | None, headers: Any,
                      length: int | None, chunks: AsyncIterator[bytes], received: float) -> web.StreamResponse:
        out = web.StreamResponse(status=status, reason=reason, headers=response_headers(headers))
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        async for chunk in chunks:
            await out.write(chunk)
        await out.write_eof()
        self._count(name, status)
        self._request_duration.observe(time.perf_counter() - received)
        return out
