"""The admin API, on its own listener (``--admin-listen``, default 127.0.0.1:9091).

``GET /sidecar/status``
    the canary (weight, phase, analysis, the last decisions with their reasons and
    metrics), the live drift values and the upstreams.
``POST /sidecar/canary`` ``{"weight": 25, "reason": "..."}``
    set the weight (percent); clears a rollback or a promotion, and the analysis, if
    configured, continues from this weight.
``POST /sidecar/rollback`` ``{"reason": "..."}``
    weight 0 at once; the canary stays there until a weight is set again.
``POST /sidecar/promote`` ``{"reason": "..."}``
    every inference request to the canary (100%); the analysis stops.
``GET /sidecar/canary/verdict``
    the canary verdict (``shadowserve.canary.verdict/1``): the registered model and version
    judged, the phase, whether it passed (ready to promote, or promoted) and the decisions;
    the evidence ``shadowserve-registry promote --evidence`` takes.

With a bearer token (``SIDECAR_ADMIN_TOKEN``, ``--admin-token-file``), every request needs
``Authorization: Bearer <token>``; without one, keep the listener on localhost. Each POST
answers with the status after the change: 400 for a malformed body, 409 when no canary is
configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from inference_protocol.codecs import json_object
from inference_protocol.errors import InvalidInput

from .controller import Controller

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        return json_object(await request.read())
    except InvalidInput as exc:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": str(exc)}).decode(),
                                 content_type="application/json") from None


def _reason(data: dict[str, Any], default: str) -> str:
    reason = data.get("reason")
    return f"{default}: {reason}" if isinstance(reason, str) and reason else default


def admin_app(controller: Controller, status: Callable[[], dict[str, Any]], token: str | None,
              verdict: Callable[[], dict[str, Any]]) -> web.Application:
    """The admin application; ``status`` builds the whole status document, ``verdict`` the canary verdict."""

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                response = _error(401, "this admin API needs Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="sidecar"'
                return response
        return await handler(request)

    async def get_status(request: web.Request) -> web.Response:
        return _json(status())

    async def get_verdict(request: web.Request) -> web.Response:
        return _json(verdict())

    async def set_canary(request: web.Request) -> web.Response:
        data = await _body(request)
        weight = data.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
            return _error(400, 'give {"weight": PERCENT} with PERCENT from 0 to 100 (12.5 is allowed)')
        try:
            controller.set_weight(float(weight), _reason(data, f"admin API: weight {float(weight):g}%"))
        except LookupError as exc:
            return _error(409, f"{exc}: give --canary or a canary section in the configuration file")
        return _json(status())

    def action(name: str, change: Callable[[str], object]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            data = await _body(request)
            try:
                change(_reason(data, f"admin API: {name}"))
            except LookupError as exc:
                return _error(409, f"{exc}: give --canary or a canary section in the configuration file")
            return _json(status())
        return handle

    app = web.Application(middlewares=[authorize])
    app.router.add_get("/sidecar/status", get_status)
    app.router.add_get("/sidecar/canary/verdict", get_verdict)
    app.router.add_post("/sidecar/canary", set_canary)
    app.router.add_post("/sidecar/rollback", action("rollback", controller.rollback))
    app.router.add_post("/sidecar/promote", action("promote", controller.promote))
    return app
