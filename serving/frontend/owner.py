"""The owner's side of the front-end workers: ports, private transports, hand-off, supervision.

`Frontend.start` reserves the public ports (a socket bound with SO_REUSEPORT that never
listens: the kernel gives connections only to listening sockets, so the workers, bound
beside it, get them all, and the port stays this server's), serves the owner's full HTTP
and gRPC transports on private Unix sockets in a 0700 directory of its own, listens on the
hand-off socket, and starts the workers (`sys.executable -m serving.frontend.worker`,
subprocesses: torch and threads do not survive fork). It returns once every worker listens.

A worker that exits without being told is started again, after a backoff that doubles
while it keeps dying young; the others' requests are untouched (each worker has its own
connection and arenas), and ``serving_frontend_worker_restarts_total`` counts restarts.
`Frontend.stop` tells the workers to stop (after the owner's drain), waits for them
(bounded), kills what is left, and removes the sockets.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .. import grpc as grpc_transport
from .. import tracing
from ..errors import ConfigError
from ..settings import Settings
from .arena import remove_stale
from .link import WorkerLink
from .process import WorkerProcess
from .worker import WorkerConfig, access_rows

if TYPE_CHECKING:
    from ..dataplane import DataPlane
    from ..grpc import GrpcTransport
    from ..http import HttpTransport

log = logging.getLogger("serving.frontend")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
BACKOFF_S = (0.5, 30.0)  # first and longest wait before a restart
STEADY_S = 30.0  # a worker that lived this long starts the backoff over
INLINE_MAX = 4096  # a request's (a response's) tensors up to this many bytes travel in the frame
ARENA_MIN = 32 * 1024 * 1024
ARENA_MAX = 256 * 1024 * 1024
MAX_FRAME = 2**31 - 1  # what one gRPC message may be; a larger response fails alone (`link`)


SOCKETS_PREFIX = "shadowserve-frontend-"


def remove_stale_sockets() -> None:
    """Remove the socket directories of owners that are gone (killed before they could)."""
    for path in Path(tempfile.gettempdir()).glob(f"{SOCKETS_PREFIX}*-*"):
        creator = path.name[len(SOCKETS_PREFIX):].split("-", 1)[0]
        try:
            if not creator.isdigit() or path.lstat().st_uid != os.getuid() or not path.is_dir():
                continue
            os.kill(int(creator), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def reserve_port(host: str, port: int, what: str) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port) with SO_REUSEPORT, not listening."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    if port:  # SO_REUSEPORT would share the port with another program's listener of this user: refuse that
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen for {what} on {host}:{port}: another program listens on it; "
                                  f"stop it or choose another --{what.lower()}-port") from None
                raise
    reserved = socket.socket(family, kind, proto)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(address)
    return reserved


class ConnectionCounts:
    """The workers' HTTP connections, summed: what `serving.connections.ConnectionLimit` says in one process."""

    def __init__(self, frontend: Frontend) -> None:
        self._frontend = frontend

    @property
    def open(self) -> int:
        return sum(link.connections[0] for link in self._frontend.links.values())

    @property
    def refused(self) -> int:
        return sum(link.connections[1] for link in self._frontend.links.values()) + self._frontend.refused_gone


class Frontend:
    """N worker processes in front of this process's dataplane."""

    def __init__(self, settings: Settings, dataplane: DataPlane, registry: CollectorRegistry) -> None:
        if not sys.platform.startswith("linux"):
            raise ConfigError("--frontend-workers needs Linux (the kernel spreads connections over the workers' "
                              "SO_REUSEPORT sockets only there); use 0")
        self.settings = settings
        self.dataplane = dataplane
        self.workers = settings.frontend_workers or 0  # the app has resolved auto (None) by now
        self.restarts = Counter("serving_frontend_worker_restarts", "Front-end workers started again after "
                                "exiting without being told", registry=registry)
        self.links: dict[int, WorkerLink] = {}  # by worker index: the live ones
        self.processes: dict[int, WorkerProcess] = {}
        self.refused_gone = 0  # refusals counted by workers that exited
        # 0700: only this user reaches the sockets; the pid in the name lets a later start remove it if we die
        self.dir = tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{os.getpid()}-")
        self._reserved: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._runner: web.ServerRunner | None = None
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()  # a worker listens, or one exited while starting
        self._failed_start: tuple[int, int] | None = None  # (index, exit code) of a worker that never listened
        # modest by default (a container's /dev/shm is 64 MiB); larger only when --max-request-bytes asks
        self.arena_bytes = ARENA_MIN if settings.max_request_bytes <= 64 * 1024 * 1024 else \
            min(settings.max_request_bytes, ARENA_MAX)
        self.max_frame = MAX_FRAME
        self._config: dict[int, bytes] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    async def start(self, http: HttpTransport, grpc: GrpcTransport) -> tuple[int, int]:
        """Serve the owner's transports privately, start the workers; the public HTTP and gRPC ports."""
        settings, loop = self.settings, asyncio.get_running_loop()
        stale = remove_stale()
        remove_stale_sockets()
        if stale:
            log.warning("removed %d shared-memory arena(s) left in /dev/shm by front-end processes that are gone",
                        stale)
        http_socket = reserve_port(settings.host, settings.http_port, "HTTP")
        self._reserved.append(http_socket)
        grpc_socket = reserve_port(settings.host, settings.grpc_port, "gRPC")
        self._reserved.append(grpc_socket)
        ports = int(http_socket.getsockname()[1]), int(grpc_socket.getsockname()[1])
        self._runner = web.ServerRunner(http.server(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        assert self._runner.server is not None
        self._servers.append(await loop.create_unix_server(self._runner.server, self.path("http.sock"),
                                                           backlog=1024))
        if grpc.servers[0].add_insecure_port(f"unix:{self.path('grpc.sock')}") == 0:
            raise OSError(f"cannot serve gRPC on the private socket {self.path('grpc.sock')}")
        await grpc.update_health()
        for server in grpc.servers:
            await server.start()
        self._servers.append(await loop.create_unix_server(self._link, self.path("handoff.sock"), backlog=256))
        fast = tracing.current() is None  # traced requests take the owner's own path, spans and all
        self._config = {index: self._worker_config(index, ports, fast) for index in range(self.workers)}
        self._supervisors = [asyncio.ensure_future(self._supervise(index)) for index in range(self.workers)]
        await self._wait_listening()
        # debug: the first line at start stays serve's "listening http=..." (probes and people grep for it)
        log.debug("%d front-end worker(s) listening (pids %s)", self.workers,
                 ", ".join(str(pid) for pid in self.worker_pids()))
        return ports

    def _worker_config(self, index: int, ports: tuple[int, int], fast: bool) -> bytes:
        settings, n = self.settings, self.workers
        cap = settings.max_connections
        share = (cap // n + (1 if index < cap % n else 0)) if cap else 0
        if cap and not share:
            share = 1
        config = WorkerConfig(
            index=index, handoff=self.path("handoff.sock"), http_socket=self.path("http.sock"),
            grpc_socket=self.path("grpc.sock"), host=settings.host, http_port=ports[0], grpc_port=ports[1],
            max_request_bytes=settings.max_request_bytes, header_timeout_secs=settings.http_header_timeout_secs,
            body_timeout_secs=settings.http_body_timeout_secs, http_cap=share, grpc_cap=share,
            admission_wait_secs=settings.admission_wait_secs, http_access=access_rows(settings.http_restricted_api),
            grpc_access=access_rows(settings.grpc_restricted_protocol), fast=fast, arena_bytes=self.arena_bytes,
            inline_max=INLINE_MAX, max_frame=self.max_frame, timeout_s=settings.exit_timeout_secs + 600.0,
            log_format=settings.log_format, log_level=settings.log_level,
            switch_interval_us=settings.switch_interval_us,
            grpc_loops=max(1, getattr(grpc_transport, "ACCEPT_LOOPS", 1) // n))
        return orjson.dumps(config.__dict__)

    def _link(self) -> asyncio.Protocol:
        link = WorkerLink(self.dataplane, self.settings.admission_wait_secs, INLINE_MAX, self.arena_bytes,
                          self.max_frame, self._hello, self._listening)
        return link.channel

    def _hello(self, link: WorkerLink) -> bool:
        index = link.index
        process = self.processes.get(index) if index is not None else None
        if process is None or process.pid != link.pid or index in self.links:
            return False
        self.links[index] = link  # type: ignore[index]  # checked above
        return True

    def _listening(self, link: WorkerLink) -> None:
        self._progress.set()

    async def _wait_listening(self) -> None:
        """Until every worker listens; OSError when one exits first, or after `START_TIMEOUT_S`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while sum(link.listening.is_set() for link in self.links.values()) < self.workers:
            if self._failed_start is not None:
                index, code = self._failed_start
                raise OSError(f"front-end worker {index} exited with code {code} while starting; its log says why")
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise OSError(f"the front-end workers did not listen within {START_TIMEOUT_S:g} s") from None

    async def _supervise(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_S[0]
        while not self._stopping.is_set():
            started = loop.time()
            process = WorkerProcess(self._config[index])
            self.processes[index] = process
            code = await process.wait()
            link = self.links.pop(index, None)
            if link is not None:
                self.refused_gone += link.connections[1]
                link.channel.close()
                link.close_arenas()
            remove_stale(process.pid)
            if self._stopping.is_set():
                return
            if link is None or not link.listening.is_set():
                self._failed_start = (index, code)
                self._progress.set()
            self.restarts.inc()
            if loop.time() - started >= STEADY_S:
                backoff = BACKOFF_S[0]
            log.warning("front-end worker %d (pid %d) exited with code %s; starting it again in %gs", index,
                        process.pid, code, backoff)
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_S[1])

    def connection_counts(self) -> ConnectionCounts:
        return ConnectionCounts(self)

    def worker_pids(self) -> list[int]:
        return [process.pid for process in self.processes.values() if process.returncode is None]

    def push_state(self) -> None:
        """Readiness and drain, to every worker (the gRPC health service and the 503s of a drain)."""
        for link in self.links.values():
            link.push_state()

    async def stop(self) -> None:
        """Tell the workers to stop, wait for them (bounded), kill the rest, and close the private sockets."""
        self._stopping.set()
        for link in self.links.values():
            link.channel.send({"t": "stop"})
        running = [p for p in self.processes.values() if p.returncode is None]
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running],
                                            timeout=STOP_TIMEOUT_S)
            for process in running:
                if process.returncode is None:
                    log.warning("front-end worker (pid %d) did not stop within %gs; killing it", process.pid,
                                STOP_TIMEOUT_S)
                    process.kill()
            if late:
                await asyncio.wait(late, timeout=STOP_TIMEOUT_S)
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for server in self._servers:
            server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        for reserved in self._reserved:
            reserved.close()
        shutil.rmtree(self.dir, ignore_errors=True)
