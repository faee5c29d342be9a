"""A front-end worker process: ``python -m serving.frontend.worker``, its settings as JSON on stdin.

Started by the owner (`serving.frontend.owner`), never by hand. It connects to the owner's
hand-off socket, says which worker it is, and listens on the public HTTP and gRPC ports
beside the other workers. It imports no torch (nor anything that does), so it starts in a
fraction of a second and stays small. It exits when the owner says so (after the owner's
drain), and at once when the owner's socket closes (the owner is gone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import shutil
import signal
import sys
from typing import Any

import orjson

from .. import logs
from ..access import AccessPolicy, Restriction
from ..connections import ClientLimits, ConnectionLimit
from .arena import Arena
from .channel import Channel
from .forward import GrpcForwarder, HttpForwarder
from .plane import WorkerPlane
from .transports import WorkerGrpc, WorkerHttp, listen_http

log = logging.getLogger("serving.frontend")

MAX_CONFIG = 1024 * 1024
HELLO_TIMEOUT_S = 30.0
CONNECTIONS_SECS = 0.25  # how often the connection counts go to the owner, when they changed
STOP_GRACE_S = 2.0
GC_THRESHOLD = (7000, 10, 10)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What the owner tells a worker (`serving.frontend.owner.worker_config` writes it)."""

    index: int
    handoff: str
    http_socket: str
    grpc_socket: str
    host: str
    http_port: int
    grpc_port: int
    max_request_bytes: int
    header_timeout_secs: float
    body_timeout_secs: float
    http_cap: int
    grpc_cap: int
    admission_wait_secs: float
    http_access: list[list[Any]]
    grpc_access: list[list[Any]]
    fast: bool
    arena_bytes: int
    inline_max: int
    max_frame: int
    timeout_s: float
    log_format: str
    log_level: str
    switch_interval_us: int
    grpc_loops: int


def access_policy(rows: list[list[Any]]) -> AccessPolicy:
    return AccessPolicy.of(Restriction(frozenset(groups), key, value) for groups, key, value in rows)


def access_rows(policy: AccessPolicy) -> list[list[Any]]:
    return [[sorted(r.groups), r.key, r.value] for r in policy.restrictions]


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = f"front-end worker {config.index}"
        self.channel = Channel(self._on_frame, config.max_frame, self.name)
        self.arena = Arena.create(config.arena_bytes, self.name) if config.arena_bytes else None
        self.plane = WorkerPlane(self.channel, self.arena, config.inline_max, config.timeout_s)
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.stopping = asyncio.Event()
        self.grpc: WorkerGrpc | None = None
        self.limits: list[ConnectionLimit] = []
        self._sent_counts: list[int] = []
        self._health: asyncio.Future[None] | None = None

    def _on_frame(self, header: dict[str, Any], inline: memoryview) -> None:
        kind = header.get("t")
        if kind in ("r", "e", "x", "f", "g"):
            self.plane.on_response(header, inline)
        elif kind == "state":
            self.plane.set_state(bool(header.get("ready")), bool(header.get("drain")))
            if self.grpc is not None:
                self._health = asyncio.ensure_future(self.grpc.set_ready(self.plane.ready()))
        elif kind == "hello" and not self.hello.done():
            self.hello.set_result(header)
        elif kind == "stop":
            self.stopping.set()

    async def run(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self.channel, config.handoff)
        arena = self.arena
        self.channel.send({"t": "hello", "n": config.index, "pid": os.getpid(),
                           "arena": arena.name if arena else None, "size": arena.size if arena else 0})
        reply = await asyncio.wait_for(self.hello, HELLO_TIMEOUT_S)
        if reply.get("arena"):
            self.plane.response_arena = Arena.attach(reply["arena"], reply.get("size"))  # type: ignore[arg-type]  # checked there
        self.plane.set_state(bool(reply.get("ready")), bool(reply.get("drain")))
        limits = ClientLimits(config.header_timeout_secs, config.body_timeout_secs, config.grpc_cap,
                              config.admission_wait_secs)
        http_forwarder, grpc_forwarder = HttpForwarder(config.http_socket), GrpcForwarder(config.grpc_socket)
        await http_forwarder.start()
        http = WorkerHttp(self.plane, http_forwarder, config.fast, config.max_request_bytes,
                          access_policy(config.http_access), limits)
        runner, listener, http_limit = await listen_http(http, config.host, config.http_port, config.http_cap,
                                                         f"http ({self.name}, its share of the cap)")
        self.grpc = WorkerGrpc(self.plane, grpc_forwarder, config.fast, config.max_request_bytes,
                               access_policy(config.grpc_access), limits.grpc_options(), config.admission_wait_secs,
                               config.grpc_loops)
        await self.grpc.set_ready(self.plane.ready())
        await self.grpc.start(config.host, config.grpc_port)
        self.limits = [http_limit]
        self.channel.send({"t": "listening"})
        # as serve does after its start (serving.app.GC_THRESHOLD): what start-up made lives as long as the
        # process, and each request makes ~100 tracked objects, so young collections every few requests
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
        counts = asyncio.ensure_future(self._report_connections())
        closed = asyncio.ensure_future(self.channel.closed.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
        counts.cancel()
        if closed.done():  # the owner is gone: nothing here can be answered any more, so leave at once
            log.warning("%s: the model server's socket closed; exiting", self.name)
            self.close_arena(owner_gone=True)
            shutil.rmtree(os.path.dirname(config.handoff), ignore_errors=True)  # the owner's sockets: nobody's now
            logging.shutdown()
            os._exit(0)  # not a teardown of the listeners and grpcio's threads: the process is done
        listener.close()
        await asyncio.gather(self.grpc.stop(STOP_GRACE_S), runner.cleanup(), return_exceptions=True)
        await asyncio.gather(http_forwarder.close(), grpc_forwarder.close(), return_exceptions=True)
        self.close_arena()
        self.channel.close()
        return 0

    async def _report_connections(self) -> None:
        """The owner serves the connection counts (one /metrics, one set of numbers)."""
        while True:
            counts = [n for limit in self.limits for n in (limit.open, limit.refused)]
            if counts != self._sent_counts:
                self._sent_counts = counts
                self.channel.send({"t": "conns", "http": counts[:2]})
            await asyncio.sleep(CONNECTIONS_SECS)

    def close_arena(self, owner_gone: bool = False) -> None:
        """Unmap the arenas; unlink this worker's, and the owner's too when the owner is gone (nobody else will)."""
        for arena in (self.arena, self.plane.response_arena):
            if arena is not None:
                if arena.created or owner_gone:
                    arena.unlink()
                arena.close()


def read_config(data: bytes) -> WorkerConfig:
    raw = orjson.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("the worker's settings are not a JSON object")
    return WorkerConfig(**raw)


async def _main() -> int:
    config = read_config(sys.stdin.buffer.read(MAX_CONFIG))
    logs.configure(config.log_format, config.log_level)
    sys.setswitchinterval(config.switch_interval_us / 1e6)
    return await Worker(config).run()


def _run_loop() -> int:
    """On uvloop when it is installed, as serve itself (`serving.serve` imports the whole server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_main())
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_main())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(_main())


def main() -> int:
    # Ctrl-C at a terminal reaches the whole process group: the owner drains and then stops the
    # workers, so a worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _run_loop()
    except Exception:
        logging.getLogger("serving.frontend").exception("front-end worker failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
