"""The shared-memory endpoints over HTTP: ``/v2/systemsharedmemory`` and ``/v2/cudasharedmemory``.

```
GET  /v2/systemsharedmemory[/region/<name>]/status
POST /v2/systemsharedmemory/region/<name>/register     {"key": ..., "offset": ..., "byte_size": ...}
POST /v2/systemsharedmemory[/region/<name>]/unregister
```
and the same under ``cudasharedmemory``, where this server holds no region: status lists
none, unregistering succeeds (Triton's examples clear both kinds first) and registering
is refused with the reason. The regions themselves are `serving.shm`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from inference_protocol.codecs import json_object

from .errors import NotFound, Unsupported
from .shm import NO_CUDA, SharedMemory

Endpoint = Callable[..., Awaitable[web.Response]]


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _done() -> web.Response:
    return web.Response()  # Triton answers a register or an unregister with an empty body


class SharedMemoryEndpoints:
    """The handlers, and the routes the HTTP transport adds for them."""

    def __init__(self, shared_memory: SharedMemory) -> None:
        self.shared_memory = shared_memory

    def fixed(self) -> dict[tuple[str, ...], tuple[str, Endpoint]]:
        """The paths without a region name (every region)."""
        return {
            ("systemsharedmemory", "status"): ("GET", self.status),
            ("systemsharedmemory", "unregister"): ("POST", self.unregister),
            ("cudasharedmemory", "status"): ("GET", self.cuda_status),
            ("cudasharedmemory", "unregister"): ("POST", self.cuda_unregister),
        }

    def region_actions(self) -> dict[str, dict[str, tuple[str, Endpoint]]]:
        """``/v2/<kind>/region/<name>/<action>``: by kind, then action."""
        return {
            "systemsharedmemory": {"status": ("GET", self.status), "register": ("POST", self.register),
                                   "unregister": ("POST", self.unregister)},
            "cudasharedmemory": {"status": ("GET", self.cuda_status), "register": ("POST", self.cuda_register),
                                 "unregister": ("POST", self.cuda_unregister)},
        }

    async def status(self, request: web.BaseRequest, name: str = "") -> web.Response:
        return _json(self.shared_memory.status(name or None))

    async def register(self, request: web.BaseRequest, name: str) -> web.Response:
        body = json_object(await request.read())
        self.shared_memory.register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
        return _done()

    async def unregister(self, request: web.BaseRequest, name: str = "") -> web.Response:
        await request.read()
        self.shared_memory.unregister(name or None)
        return _done()

    async def cuda_status(self, request: web.BaseRequest, name: str = "") -> web.Response:
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name[:64]}'; {NO_CUDA}")
        return _json([])

    async def cuda_register(self, request: web.BaseRequest, name: str) -> web.Response:
        raise Unsupported(NO_CUDA)

    async def cuda_unregister(self, request: web.BaseRequest, name: str = "") -> web.Response:
        await request.read()
        return _done()
