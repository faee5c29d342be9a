"""KServe v2 over HTTP (aiohttp): a thin layer over the `DataPlane`.

Errors become status codes only here: `ServingError.http_status` with a v2 body
``{"error": "..."}``; anything else is logged and answered with a 500 that carries no
traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from .codecs import decode_infer_request, encode_infer_response, error_body
from .dataplane import DataPlane
from .errors import InvalidInput, PayloadTooLarge, ServingError
from .metrics import exposition

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type=JSON)


def _v2(handler: Handler) -> Handler:
    """Map errors to v2 error responses."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ServingError as exc:
            return _error(exc.http_status, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, f"request body too large ({exc.text}); raise --max-request-bytes "
                               "or send smaller requests")
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error(500, "internal server error; the server log has the details")
    return wrapper


async def _json_body(request: web.Request) -> dict[str, Any]:
    """An optional JSON object body (the repository endpoints accept an empty one)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


class HttpTransport:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        get, post = app.router.add_get, app.router.add_post
        # infer first: the router tries resources in the order they were added
        post("/v2/models/{model}/infer", _v2(self.infer))
        post("/v2/models/{model}/versions/{version}/infer", _v2(self.infer))
        get("/v2/health/live", self.live)
        get("/v2/health/ready", self.ready)
        get("/v2", self.metadata)
        get("/v2/models/stats", _v2(self.stats))
        post("/v2/repository/index", _v2(self.repository_index))
        post("/v2/repository/models/{model}/load", _v2(self.load_model))
        post("/v2/repository/models/{model}/unload", _v2(self.unload_model))
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(prefix, _v2(self.model_metadata))
            get(prefix + "/ready", self.model_ready)
            get(prefix + "/config", _v2(self.model_config))
            get(prefix + "/stats", _v2(self.stats))
        return app

    async def live(self, request: web.Request) -> web.Response:
        live = self.dataplane.live()
        return _json({"live": live}, 200 if live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def metadata(self, request: web.Request) -> web.Response:
        return _json(self.dataplane.metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(self.dataplane.model_metadata(info["model"], info.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        ready = self.dataplane.model_ready(info["model"], info.get("version"))
        return _json({"name": info["model"], "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(self.dataplane.model_config(info["model"], info.get("version")))

    async def stats(self, request: web.Request) -> web.Response:
        info = request.match_info
        return _json(self.dataplane.model_stats(info.get("model"), info.get("version")))

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        return _json(self.dataplane.repository_index(bool(body.get("ready", False))))

    async def load_model(self, request: web.Request) -> web.Response:
        parameters = (await _json_body(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        if any(key.startswith("file:") for key in parameters):
            raise InvalidInput("loading model files through the load request is not supported; put them in the "
                               "model repository")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidInput("parameter 'config' must be a string holding the model config as JSON")
        await self.dataplane.load_model(request.match_info["model"], config)
        return _json({})

    async def unload_model(self, request: web.Request) -> web.Response:
        await _json_body(request)
        await self.dataplane.unload_model(request.match_info["model"])
        return _json({})

    async def infer(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {self.max_request_bytes} "
                                  "bytes; raise --max-request-bytes or send smaller requests")
        body = await request.read()
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            try:
                header_length_value: int | None = int(header_length)
            except ValueError:
                raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        else:
            header_length_value = None
        infer_request = decode_infer_request(body, header_length_value)
        info = request.match_info
        response = await self.dataplane.infer(info["model"], info.get("version"), infer_request)
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


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """The Prometheus endpoint: text exposition format 0.0.4, as Triton serves it."""
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
