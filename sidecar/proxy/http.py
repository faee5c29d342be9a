"""The HTTP proxy: every request to the primary, or to the canary; v2 infer requests also mirrored to shadows.

The client gets the serving upstream's status, headers (less hop-by-hop ones) and body.
Inference requests (``POST /v2/models/{model}[/versions/{v}]/infer``) are routed by the
plan (`sidecar.proxy.plan`): to the canary for its weight's share of sticky keys; a canary
that fails one (no answer, 429 or 5xx) is answered by retrying once on the primary,
counted. Bodies up to the largest ``max_body_size`` are read whole, which mirroring and
retrying need; larger ones and bodies of unknown length stream to the upstream and are
neither mirrored nor retried. Responses of requests nobody mirrors stream back when they
are large or of unknown length. Upstream failures answer like Envoy: 503 when the
upstream cannot be reached, 504 when it times out, with a v2 error body. With tracing on
(`sidecar.spans`) a request is a SERVER span and each attempt upstream a CLIENT span whose
``traceparent`` replaces the client's; off, the client's goes upstream as it came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from inference_protocol.headers import HEADER_LENGTH

from ..canary.controller import Controller
from ..mirror.exchange import CONNECTION, TIMEOUT, Answer, Exchange
from ..records.decode import http_request_id
from ..routing import CANARY, PRIMARY, infer_target, retry_on_primary, upstream_failed
from ..spans import RequestSpan
from ..upstream.client import HttpUpstream, Response
from ..upstream.headers import forward_headers, response_headers
from .guard import ConnectionGuard
from .health import Health
from .metrics import ProxyMetrics
from .plan import REQUEST_ID, Incoming, Plan, Proxy
from .upstreams import MIN_BUFFER, Upstreams

JSON = "application/json"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _header_length(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


async def _body(request: web.BaseRequest, headers: CIMultiDict[str],
                limit: int) -> tuple[bytes | None, bytes | AsyncIterable[bytes]]:
    """The body as sent upstream, and the same bytes when held (up to ``limit``), else None: streamed through."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        # The client waits for this before it sends the body (curl for up to a second).
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if not request.body_exists:
        return b"", b""
    length = request.content_length
    if length is not None and length <= limit:
        held = await request.read()
        return held, held
    if length is not None:
        headers["Content-Length"] = str(length)
    return None, request.content.iter_any()  # never held whole


class _Reply:
    """One upstream's answer, buffered: what the client gets unless a retry replaces it."""

    __slots__ = ("answer", "out", "upstream_secs")

    def __init__(self, answer: Answer, out: web.Response, upstream_secs: float) -> None:
        self.answer, self.out, self.upstream_secs = answer, out, upstream_secs


class _Call:
    """One request on its way upstream: what each attempt sends, and to whom."""

    __slots__ = ("body", "headers", "infer", "may_stream", "received", "request", "retried", "retry", "served", "span",
                 "upstream")

    def __init__(self, request: web.BaseRequest, headers: CIMultiDict[str], body: bytes | AsyncIterable[bytes],
                 infer: bool, received: float, span: RequestSpan | None) -> None:
        self.request = request
        self.span = span  # the request's span (tracing on): each attempt is a child of it
        self.retried = False  # this attempt retries a failed canary
        self.headers = headers
        self.body = body
        self.infer = infer
        self.received = received
        self.may_stream = True  # the answer may stream back: nobody mirrors it
        self.retry = False  # a failed answer is retried on the primary, so it is read whole
        self.served = PRIMARY
        self.upstream: HttpUpstream | None = None

    def to(self, served: str, upstream: HttpUpstream, retry: bool) -> _Call:
        self.served, self.upstream, self.retry = served, upstream, retry
        return self


class HttpProxy(Proxy):
    """The handler of the HTTP listener (an aiohttp low-level server: no router in the hop)."""

    def __init__(self, upstreams: Callable[[], Upstreams], metrics: ProxyMetrics,
                 submit: Callable[[Exchange], object], health: Health, rollout: Controller) -> None:
        super().__init__(upstreams, metrics, submit, health, rollout, "http")
        self.guard: ConnectionGuard | None = None  # the listener's deadlines, told where each request starts and ends

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
                if self.spans is None:  # tracing off: no frame more than before it existed
                    return await self._forward(request, time.perf_counter(), None)
                return await self.forward(request)
            finally:
                self.in_flight -= 1
        finally:
            if guard is not None:
                guard.request_done(request)

    async def forward(self, request: web.BaseRequest) -> web.StreamResponse:
        """Proxy one request (in a span when tracing is on)."""
        received = time.perf_counter()
        spans = self.spans
        if spans is None:
            return await self._forward(request, received, None)
        span = spans.http(request.method, request.path, request.headers)
        status: int | None = None
        error: BaseException | None = None
        try:
            out = await self._forward(request, received, span)
            status = out.status
            return out
        except BaseException as exc:  # the client went away, or a bug: the span says so, and it goes on up
            error = exc
            raise
        finally:
            span.end_http(status, error)

    async def _forward(self, request: web.BaseRequest, received: float,
                       span: RequestSpan | None) -> web.StreamResponse:
        ups = self._upstreams()
        headers = forward_headers(request.headers)
        held, body = await _body(request, headers, ups.buffer_limit)
        target = infer_target(request.path) if request.method == "POST" else None
        if span is not None and target is not None:
            span.model(*target)
        plan = Plan(PRIMARY)
        if target is not None and self.routes(ups):
            header_length = _header_length(request.headers.get(HEADER_LENGTH))
            size = request.content_length if held is None else len(held)
            incoming = Incoming("http", request.headers.get, held, size,
                                lambda data: http_request_id(data, header_length), target[0], header_length, span)
            canary = ups.canary
            plan = self.plan(ups, incoming, infer=True, canary_here=canary is not None and canary.http is not None,
                             mirror=True)
            if plan.add_request_id is not None:
                headers[REQUEST_ID] = plan.add_request_id
            if plan.exchange is not None and held is not None:  # copies go only with both
                for shadow in plan.copies:
                    shadow.send_http(request.method, request.raw_path, headers, held, plan.exchange, span)
        call = _Call(request, headers, body, target is not None, received, span)
        call.may_stream = plan.exchange is None
        if plan.served == CANARY and ups.canary is not None and ups.canary.http is not None:
            call.to(CANARY, ups.canary.http, retry=held is not None)
        else:
            call.to(PRIMARY, ups.primary, retry=False)
        reply: web.StreamResponse | _Reply | None = None
        upstream_secs = 0.0  # a failed canary attempt is upstream time too
        try:
            reply = await self._send(call)
            if isinstance(reply, _Reply) and retry_on_primary(call.served, reply.answer.status, idempotent=True,
                                                              body_held=held is not None):
                self.observer.retries.inc()
                upstream_secs, reply = reply.upstream_secs, None
                plan.served = PRIMARY  # a cancelled retry is not the canary's answer
                call.retried = True
                reply = await self._send(call.to(PRIMARY, ups.primary, retry=False))
        finally:
            plan.settle(reply.answer if isinstance(reply, _Reply) else None)
        if not isinstance(reply, _Reply):
            return reply  # streamed back, counted
        out = reply.out
        self.observer.answered(call.served, str(out.status), received, upstream_secs + reply.upstream_secs)
        return out

    async def _send(self, call: _Call) -> web.StreamResponse | _Reply:
        """One attempt on one upstream; a large answer nobody mirrors streams to the client at once."""
        upstream, name, request = call.upstream, call.served, call.request
        assert upstream is not None
        span = call.span.call(name, call.retried) if call.span is not None else None
        if span is not None:
            span.headers(call.headers)  # the upstream's spans are children of this attempt's
        status: int | None = None
        error: str | None = None
        sent = upstream.begin()
        try:
            response = await upstream.send(request.method, request.raw_path, call.headers.items(), call.body)
            status, length = response.status, response.content_length
            if call.may_stream and (length is None or length > MIN_BUFFER) and not (
                    call.retry and upstream_failed(status)):
                if call.infer:
                    self.observer.upstream(name, time.perf_counter() - sent, status)
                return await self._stream(call, response)
            data = await response.read()
            elapsed = time.perf_counter() - sent
            answer = Answer(name, status, elapsed * 1000, None, data,
                            _header_length(response.headers.get(HEADER_LENGTH)))
            out = web.Response(status=status, reason=response.reason, headers=response_headers(response.headers),
                               body=data)
        except asyncio.TimeoutError:
            elapsed = time.perf_counter() - sent
            status, error = None, TIMEOUT  # a body that did not arrive in time is no answer
            answer = Answer(name, None, elapsed * 1000, TIMEOUT)
            out = _json({"error": f"upstream request timeout: the {name} did not answer within "
                                  f"{upstream.timeout:g}s"}, 504)
        except (OSError, ValueError) as exc:  # UpstreamError is an OSError; ValueError: a header it cannot send
            elapsed = time.perf_counter() - sent
            status, error = None, CONNECTION
            answer = Answer(name, None, elapsed * 1000, CONNECTION)
            out = _json({"error": f"upstream connect error or disconnect/reset: the {name} at "
                                  f"{upstream.base_url} ({type(exc).__name__}: {exc})"}, 503)
        finally:
            upstream.end()
            if span is not None:
                span.end_http(status, error if status is None else None)
        if call.infer:
            self.observer.upstream(name, elapsed, answer.status)
        return _Reply(answer, out, elapsed)

    async def _stream(self, call: _Call, response: Response) -> web.StreamResponse:
        out = web.StreamResponse(status=response.status, reason=response.reason,
                                 headers=response_headers(response.headers))
        if response.content_length is not None:
            out.content_length = response.content_length
        await out.prepare(call.request)
        async for chunk in response.iter_chunks():
            await out.write(chunk)
        await out.write_eof()
        self.observer.answered(call.served, str(response.status), call.received, None)
        return out
