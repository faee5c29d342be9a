"""KServe v2 over HTTP (aiohttp): a thin layer over the `DataPlane`.

Errors become status codes only here: `ServingError.http_status` with a v2 body
``{"error": "..."}``; anything else is logged and answered with a 500 that carries no
traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from inference_protocol.codecs import decode_infer_request, encode_infer_response, json_object
from inference_protocol.errors import error_body
from inference_protocol.headers import HEADER_LENGTH

from . import tracing
from .access import AccessPolicy, http_group
from .connections import ClientLimits, TimedRequest
from .errors import InvalidInput, PayloadTooLarge, ServingError, Unavailable
from .http_shm import SharedMemoryEndpoints
from .metrics import Metrics
from .streaming import DecoupledOnly

if TYPE_CHECKING:  # the front-end workers import this module without torch, which the dataplane brings
    from .dataplane import DataPlane

log = logging.getLogger(__name__)

JSON = "application/json"
RETRY_AFTER_SECS = "1"  # on a 503 from admission: a full queue drains within about a second
ROUTES_KEPT = 256  # paths whose route is remembered


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type=JSON)


async def _json_body(request: web.BaseRequest) -> dict[str, Any]:
    return json_object(await request.read())


Endpoint = Callable[..., Awaitable[web.Response]]


class HttpTransport:
    """The v2 endpoints on aiohttp's low-level server, with a router of its own.

    aiohttp's Application adds a URL dispatcher that tries resources one by one, and
    request objects with more to set up; the v2 paths are few and fixed, so `route`
    splits the path once and picks the endpoint directly.
    """

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, access: AccessPolicy = AccessPolicy(),
                 limits: ClientLimits = ClientLimits()) -> None:
        self.dataplane = dataplane
        self.access = access
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        get, post = "GET", "POST"
        self._fixed: dict[tuple[str, ...], tuple[str, Endpoint]] = {
            (): (get, self.metadata),
            ("health", "live"): (get, self.live),
            ("health", "ready"): (get, self.ready),
            ("models", "stats"): (get, self.stats),
            ("repository", "index"): (post, self.repository_index),
        }
        self._model_actions: dict[str, tuple[str, Endpoint]] = {
            "infer": (post, self.infer), "": (get, self.model_metadata), "ready": (get, self.model_ready),
            "config": (get, self.model_config), "stats": (get, self.stats),
        }
        self._routes: dict[tuple[str, str], tuple[Endpoint, tuple[str, ...]]] = {}
        self._repository_actions: dict[str, Endpoint] = {"load": self.load_model, "unload": self.unload_model}
        shared_memory = SharedMemoryEndpoints(dataplane.shared_memory)
        self._fixed.update(shared_memory.fixed())
        self._region_actions = shared_memory.region_actions()  # /v2/<kind>sharedmemory/region/<name>/<action>

    def server(self) -> web.Server:
        """The request handler, for a ``web.ServerRunner``; hung-up clients cancel their handler.

        Its `ClientLimits` bound the time a client may take to send its headers and its body,
        and how long a request may wait for a place in a full queue.
        """
        limits = self.limits
        body_timeout = limits.body_timeout_secs

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return TimedRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                                client_max_size=self.max_request_bytes, body_timeout=body_timeout)
        return web.Server(self.handle, request_factory=make_request, handler_cancellation=True,
                          **limits.handler_options())

    def route(self, method: str, path: str) -> tuple[Endpoint, tuple[str, ...]] | web.Response:
        """The endpoint and its arguments (model, version), or the 404/405 to answer."""
        routed = self._routes.get((method, path))  # a client sends the same few paths again and again
        if routed is None:
            found = self._route(method, path)
            if not isinstance(found, tuple):
                return found  # a fresh response each time: one is sent once
            if len(self._routes) >= ROUTES_KEPT:  # any path may route (a model's name is free): bounded
                self._routes.clear()
            routed = self._routes[(method, path)] = found
        return routed

    def _route(self, method: str, path: str) -> tuple[Endpoint, tuple[str, ...]] | web.Response:
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            return _error(404, f"no endpoint at {path}; the KServe v2 endpoints are under /v2")
        rest = tuple(parts[1:]) if parts[1:] != [""] else ()
        args: tuple[str, ...] = ()
        found = self._fixed.get(rest)
        if found is None and len(rest) >= 2 and rest[0] == "models":
            model, tail = rest[1], rest[2:]
            version = ""
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            if len(tail) <= 1:
                found = self._model_actions.get(tail[0] if tail else "")
                args = (model, version)
        elif found is None and len(rest) == 4 and rest[:2] == ("repository", "models"):
            action = self._repository_actions.get(rest[3])
            found = ("POST", action) if action else None
            args = (rest[2],)
        elif found is None and len(rest) == 4 and rest[0] in self._region_actions and rest[1] == "region":
            found = self._region_actions[rest[0]].get(rest[3])
            args = (rest[2],)
        if found is None:
            return _error(404, f"no endpoint at {path}; see the KServe v2 protocol for the paths")
        allowed, endpoint = found
        if method != allowed:
            return _error(405, f"{path} takes {allowed}, not {method}")
        return endpoint, args

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route, call the endpoint, and map errors to v2 error responses (never a traceback)."""
        routed = self.route(request.method, request.path)
        if not isinstance(routed, tuple):  # the 404 or 405 (isinstance on a Response costs an ABC check)
            return routed
        endpoint, args = routed
        if self.access.restrictions:  # before the body is read
            denied = self.access.denial(http_group(request.path), request.headers)
            if denied is not None:
                return _error(403, denied)
        try:
            return await endpoint(request, *args)
        except ServingError as exc:
            return _error(exc.http_status, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, f"request body too large ({exc.text}); raise --max-request-bytes "
                               "or send smaller requests")
        except Exception:  # never a traceback to the client
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error(500, "internal server error; the server log has the details")

    async def live(self, request: web.BaseRequest) -> web.Response:
        live = self.dataplane.live()
        return _json({"live": live}, 200 if live else 503)

    async def ready(self, request: web.BaseRequest) -> web.Response:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def metadata(self, request: web.BaseRequest) -> web.Response:
        return _json(self.dataplane.metadata())

    async def model_metadata(self, request: web.BaseRequest, model: str, version: str) -> web.Response:
        return _json(self.dataplane.model_metadata(model, version))

    async def model_ready(self, request: web.BaseRequest, model: str, version: str) -> web.Response:
        ready = self.dataplane.model_ready(model, version)
        return _json({"name": model, "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: web.BaseRequest, model: str, version: str) -> web.Response:
        return _json(self.dataplane.model_config(model, version))

    async def stats(self, request: web.BaseRequest, model: str | None = None, version: str = "") -> web.Response:
        return _json(self.dataplane.model_stats(model, version or None))

    async def repository_index(self, request: web.BaseRequest) -> web.Response:
        body = await _json_body(request)
        return _json(self.dataplane.repository_index(bool(body.get("ready", False))))

    async def load_model(self, request: web.BaseRequest, model: str) -> web.Response:
        parameters = (await _json_body(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        if any(key.startswith("file:") for key in parameters):
            raise InvalidInput(f"failed to load '{model}', failed to poll from model repository: loading model files "
                               "through the load request is not supported; put them in the model repository")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidInput("parameter 'config' must be a string holding the model config as JSON")
        await self.dataplane.load_model(model, config)
        return _json({})

    async def unload_model(self, request: web.BaseRequest, model: str) -> web.Response:
        await _json_body(request)
        await self.dataplane.unload_model(model)
        return _json({})

    async def infer(self, request: web.BaseRequest, model: str, version: str, span: Any = None) -> web.Response:
        """``POST .../infer``; ``span`` is the request's span, once `_traced` has started it."""
        if span is None and (traced := tracing.current()) is not None:  # off: this test is all tracing costs
            return await self._traced(traced, request, model, version)
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {self.max_request_bytes} "
                                  "bytes; raise --max-request-bytes or send smaller requests")
        if self.dataplane.is_decoupled(model, version):  # Triton's text: a stream of responses needs gRPC
            raise DecoupledOnly("HTTP end point doesn't support models with decoupled transaction policy; "
                              "use gRPC ModelStreamInfer (tritonclient.grpc's start_stream)")
        try:  # a place in the queue first, from the path alone: a flood of 503s costs no decoding
            async with self.dataplane.admission(model, version, self.limits.admission_wait_secs):
                body = await request.read()
        except Unavailable as exc:
            return web.Response(body=error_body(str(exc)), status=503, content_type=JSON,
                                headers={"Retry-After": RETRY_AFTER_SECS})
        # from here to the batcher's queue nothing is awaited, so the place passes to this request
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            try:
                header_length_value: int | None = int(header_length)
            except ValueError:
                raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        else:
            header_length_value = None
        infer_request = decode_infer_request(body, header_length_value)
        response = await self.dataplane.infer(model, version, infer_request, span)
        default = bool(infer_request.parameters.get("binary_data_output", False))
        if infer_request.outputs is None:
            binary = [default] * len(response.outputs)
        else:
            binary = [default if o.binary is None else o.binary for o in infer_request.outputs]
        payload, json_length = encode_infer_response(response, binary)
        if json_length is None:
            return web.Response(body=payload, content_type=JSON)
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(json_length)})

    async def _traced(self, traced: tracing.Tracing, request: web.BaseRequest, model: str,
                      version: str) -> web.Response:
        from . import spans

        with spans.http_request(traced, request.headers, model, version) as span:
            response = await self.infer(request, model, version, span)
            spans.http_status(span, response.status)
            return response


def metrics_app(metrics: Metrics) -> web.Application:
    """The Prometheus endpoint: text exposition format 0.0.4, as Triton serves it."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
