"""The floor: an aiohttp handler on uvloop that reads the body and returns a small JSON.

It does what every HTTP model server must do (accept, parse HTTP, read the body, write a
response) and nothing else, so no server built on aiohttp can beat it.

    python benchmarks/programs/noop_server.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

REPLY = b'{"model_name":"noop","outputs":[]}'


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(body=b"")


async def main(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, access_log=None)  # as serve: no access log
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    # asyncio.Runner is Python 3.11+, as are the interpreters these programs run on; mypy checks for 3.10
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[attr-defined]  # 3.11+, see above
        runner.run(main(args.host, args.port))
