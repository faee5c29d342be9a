"""The HTTP proxy: every request to the primary, v2 infer requests also mirrored to shadows.

The client gets the primary's status, headers (less hop-by-hop ones) and body. Bodies up
to the largest shadow's ``max_body_size`` are read whole, which mirroring needs; larger
ones and bodies of unknown length stream to the primary and are not mirrored (counted).
Responses of requests nobody mirrors stream back when they are large or of unknown
length. Upstream failures answer like Envoy: 503 when the primary cannot be reached, 504
when it times out, with a v2 error body.
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

from .exchange import CANCELLED, CONNECTION, TIMEOUT, Answer, Exchange
from .health import Health
from .metrics import Metrics
from .mirror import choose_shadows
from .routing import infer_target
from .runtime import MIN_BUFFER, PRIMARY, Runtime
from .tensors import http_request_id
from .upstream import HEADER_LENGTH, forward_headers, response_headers

JSON = "application/json"
REQUEST_ID = "x-request-id"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _header_length(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class HttpProxy:
    """The handler of the HTTP listener (an aiohttp low-level server: no router in the hop)."""

    def __init__(self, runtime: Callable[[], Runtime], metrics: Metrics, submit: Callable[[Exchange], object],
                 health: Health) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self._submit = submit
        self.health = health
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._requests: dict[int, Any] = {}
        self._request_duration = metrics.request_duration.labels("http")
        self._hop = metrics.hop_duration.labels("http")

    def request_factory(self, client_max_size: int) -> Callable[..., web.BaseRequest]:
        """Requests for aiohttp's low-level server, with our own cap on a body read whole."""
        loop = asyncio.get_running_loop()

        def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=client_max_size)
        return make

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return _json({"live": True})
        if path == "/readyz":
            ready, reason = await self.health.ready()
            return _json({"ready": ready, "reason": reason}, 200 if ready else 503)
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self.forward(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def _count(self, status: int) -> None:
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = self.metrics.requests.labels(PRIMARY, "http", str(status))
        counter.inc()

    def _mirror(self, rt: Runtime, request: web.BaseRequest, headers: Any, body: bytes | None,
                model: str) -> Exchange | None:
        header_length = _header_length(request.headers.get(HEADER_LENGTH))
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        key = request.headers.get(rt.sample_header)
        if key is None and rt.needs_key and body is not None:
            key = http_request_id(body, header_length)
        size = len(body) if body is not None else request.content_length  # None: unknown (chunked)
        chosen = choose_shadows(rt.shadows, key or request_id, "http", size)
        if not chosen or body is None:
            return None
        if REQUEST_ID not in headers:
            headers[REQUEST_ID] = request_id  # as Envoy does, so primary and shadow logs correlate
        exchange = Exchange(key or request_id, request_id, time.time(), model, "http", body, header_length,
                            self._submit)
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
        exchange = None
        if rt.shadows and request.method == "POST":
            target = infer_target(request.path)
            if target is not None:
                exchange = self._mirror(rt, request, headers, body, target[0])
        upstream = rt.primary
        sent = upstream.begin()
        answer: Answer | None = None
        reason: str | None
        upstream_headers: Mapping[str, str]
        try:
            if upstream.pool is not None and body is not None:
                resp = await upstream.pool.request(request.method, upstream.target(request.raw_path),
                                                   headers.items(), body, upstream.timeout)
                if exchange is None and (resp.content_length is None or resp.content_length > MIN_BUFFER):
                    return await self._stream(request, resp.status, resp.reason, resp.headers, resp.content_length,
                                              resp.iter_chunks(), received)
                status, reason, upstream_headers = resp.status, resp.reason, resp.headers
                data = await resp.read()
            else:
                async with upstream.session.request(request.method, upstream.url(request.raw_path), data=payload,
                                                    headers=headers, allow_redirects=False) as streamed:
                    if exchange is None and (streamed.content_length is None
                                             or streamed.content_length > MIN_BUFFER):
                        return await self._stream(request, streamed.status, streamed.reason, streamed.headers,
                                                  streamed.content_length, streamed.content.iter_any(), received)
                    status, reason, upstream_headers = streamed.status, streamed.reason, streamed.headers
                    data = await streamed.read()
            replied = time.perf_counter()
            answer = Answer(PRIMARY, status, (replied - sent) * 1000, None, data,
                            _header_length(upstream_headers.get(HEADER_LENGTH)))
            out = web.Response(status=status, reason=reason, headers=response_headers(upstream_headers), body=data)
        except asyncio.TimeoutError:
            replied = time.perf_counter()
            answer = Answer(PRIMARY, None, (replied - sent) * 1000, TIMEOUT)
            out = _json({"error": f"upstream request timeout: the primary did not answer within "
                                  f"{upstream.timeout:g}s"}, 504)
        except (aiohttp.ClientError, OSError) as exc:
            replied = time.perf_counter()
            answer = Answer(PRIMARY, None, (replied - sent) * 1000, CONNECTION)
            out = _json({"error": f"upstream connect error or disconnect/reset: the primary at "
                                  f"{upstream.base_url} ({type(exc).__name__}: {exc})"}, 503)
        finally:
            upstream.end()
            if exchange is not None:
                exchange.set_primary(answer or Answer(PRIMARY, None, None, CANCELLED))
        self._count(out.status)
        done = time.perf_counter()
        self._request_duration.observe(done - received)
        self._hop.observe(max(0.0, (done - received) - (replied - sent)))
        return out

    async def _stream(self, request: web.BaseRequest, status: int, reason: str | None, headers: Any,
                      length: int | None, chunks: AsyncIterator[bytes], received: float) -> web.StreamResponse:
        out = web.StreamResponse(status=status, reason=reason, headers=response_headers(headers))
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        async for chunk in chunks:
            await out.write(chunk)
        await out.write_eof()
        self._count(status)
        self._request_duration.observe(time.perf_counter() - received)
        return out
