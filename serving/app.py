"""The composition root: build every part from the settings, start, report readiness, stop.

Production (`serve`) and the tests start servers the same way::

    server = await serving.app.start(settings)   # listening, models loaded
    ...
    await server.stop()                              # drain, unload, close
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import __version__, tracing
from .connections import ClientLimits, ConnectionLimit, listen
from .control import ModelControl
from .cpus import available_cpus, default_frontend_workers
from .dataplane import DataPlane
from .device import Placement, configure_threads
from .errors import ConfigError
from .gpu import register_gpu_metrics
from .grpc import GrpcTransport
from .http import HttpTransport, metrics_app
from .metrics import Metrics
from .repository import Repository
from .settings import Settings, default_model_cache_dir
from .shm import SharedMemory
from .shutdown import stop_on_signals
from .storage_urls import StoreUrl

if TYPE_CHECKING:
    from .frontend.owner import Frontend
    from .sources import ModelSources
    from .storage import RemoteRepository

log = logging.getLogger("serving")
GC_THRESHOLD = (7000, 10, 10)  # the young generation's, then the two older ones' (Python's own)


class Server:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.repository: Repository | None = None
        self.control: ModelControl | None = None
        # with --model-source: the registry models; with an s3:// (gs://, ...) --model-repository: its local copy
        self.sources: ModelSources | RemoteRepository | None = None
        self.dataplane: DataPlane | None = None
        self.shared_memory: SharedMemory | None = None  # regions clients registered: open descriptors
        self.grpc: GrpcTransport | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self.abandoned = 0  # requests still running when the drain gave up
        self._runners: list[web.BaseRunner] = []
        self._listeners: list[asyncio.Server] = []
        self.connection_limits: dict[str, ConnectionLimit] = {}  # by port name: open and refused connections
        self._force = asyncio.Event()
        self.frontend: Frontend | None = None  # with --frontend-workers: the worker processes

    def worker_pids(self) -> list[int]:
        """The process ids of the front-end workers running now (none without --frontend-workers)."""
        return self.frontend.worker_pids() if self.frontend is not None else []

    async def start(self) -> None:
        """Listen, then load the models; readiness turns true once every model has been tried."""
        cores = available_cpus()
        if self.settings.frontend_workers is None:  # auto: from the cores this process may use
            self.settings = dataclasses.replace(self.settings, frontend_workers=default_frontend_workers(cores))
        settings = self.settings
        root = self._repository_root()
        placement = Placement(settings.device)
        device = placement.default()  # fails early on --device cuda without a GPU
        # torch's threads by default leave a core to this loop and one to each front-end worker
        threads = configure_threads(settings.cpu_threads or max(1, cores - 1 - (settings.frontend_workers or 0)))
        sys.setswitchinterval(settings.switch_interval_us / 1e6)  # process-wide, like torch's threads
        register_gpu_metrics(self.metrics.registry)
        self.repository = Repository(root, placement, self.metrics)
        self.control = ModelControl(self.repository, settings.model_control_mode, settings.load_model,
                                    settings.repository_poll_secs, self.sources)
        self.shared_memory = SharedMemory(settings.allow_client_shm, max_input_bytes=settings.max_request_bytes)
        self.dataplane = DataPlane(self.repository, self.control, __version__, settings.strict_readiness,
                                   settings.server_name, self.shared_memory)
        limits = ClientLimits(settings.http_header_timeout_secs, settings.http_body_timeout_secs,
                              settings.max_connections, settings.admission_wait_secs)
        http = HttpTransport(self.dataplane, settings.max_request_bytes, settings.http_restricted_api, limits)
        if settings.frontend_workers:  # the workers take the public ports; this process serves them privately
            from .frontend.owner import Frontend

            self.frontend = Frontend(settings, self.dataplane, self.metrics.registry)
            self.grpc = GrpcTransport(self.dataplane, settings.max_request_bytes, settings.grpc_restricted_protocol,
                                      limits.grpc_options(), limits.admission_wait_secs, accept_loops=1)
            self.http_port, self.grpc_port = await self.frontend.start(http, self.grpc)
            self.connection_limits["http"] = self.frontend.connection_counts()  # type: ignore[assignment]
        else:
            self.http_port = await self._listen(web.ServerRunner(http.server(), access_log=None, shutdown_timeout=2.0),
                                                settings.http_port, limits, "http")
            self.grpc = GrpcTransport(self.dataplane, settings.max_request_bytes, settings.grpc_restricted_protocol,
                                      limits.grpc_options(), limits.admission_wait_secs)
            self.grpc_port = await self.grpc.start(settings.host, settings.grpc_port)
        self.metrics_port = await self._listen(web.AppRunner(metrics_app(self.metrics), access_log=None,
                                                             shutdown_timeout=2.0, **limits.handler_options()),
                                               settings.metrics_port, limits, "metrics")
        host = settings.host
        log.info("listening http=%s:%d grpc=%s:%d metrics=%s:%d", host, self.http_port, host, self.grpc_port,
                 host, self.metrics_port,
                 extra={"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port})
        if self.sources is not None:
            await self.sources.start()  # listening meanwhile: a long download is no failed liveness probe
        await self.control.start()
        # What start-up made (torch, the models) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks ~200,000 objects (0.2 s with
        # the event loop stopped), which a flood of requests would otherwise trigger again and again.
        gc.freeze()
        # Each request makes about a hundred tracked objects (coroutines, futures, dicts): at
        # Python's threshold of 700 a young collection ran every few requests, on the loop
        # (3% of its time; 138 -> 123 us of loop CPU per HTTP request at 7000, 3,465 -> 3,621 req/s).
        gc.set_threshold(*GC_THRESHOLD)
        self.dataplane.started = True
        await self.grpc.update_health()
        if self.frontend is not None:
            self.frontend.push_state()
        ready = self.dataplane.ready()
        remote = settings.model_repository if isinstance(settings.model_repository, StoreUrl) else None
        log.info("ready=%s: %d model(s) in %s on %s (%d CPU thread(s) for torch)", str(ready).lower(),
                 len(self.repository.models), f"{remote} (copied to {root})" if remote else root, device, threads)

    def _repository_root(self) -> Path:
        """The model repository to serve: --model-repository, or the one --model-source lays out in the cache."""
        settings = self.settings
        if settings.model_source:
            if settings.model_repository is not None:
                raise ConfigError("--model-repository and --model-source both give the models: use one (the "
                                  "sources are laid out as a repository in --model-cache-dir)")
            from .sources import ModelSources  # the registry's modules, only when a source is given

            self.sources = ModelSources(settings.model_source, settings.registry_uri,
                                        settings.model_cache_dir or default_model_cache_dir(), self.metrics)
            return self.sources.root
        if settings.model_repository is None:
            raise ConfigError("--model-repository is required, unless --model-source gives the models")
        if isinstance(settings.model_repository, StoreUrl):
            from .storage import Limits, RemoteRepository  # fsspec's modules, only for a remote repository

            limits = Limits(settings.model_repository_max_bytes, settings.model_repository_max_files,
                            settings.model_repository_timeout_secs)
            self.sources = RemoteRepository(settings.model_repository,
                                            settings.model_cache_dir or default_model_cache_dir(), limits,
                                            settings.storage_environ)
            return self.sources.root
        if not settings.model_repository.is_dir():
            raise ConfigError(f"--model-repository {settings.model_repository} is not a directory")
        return settings.model_repository

    async def _listen(self, runner: web.BaseRunner, port: int, limits: ClientLimits, name: str) -> int:
        # Our own drain waits for in-flight requests; aiohttp's shutdown (shutdown_timeout)
        # then only closes connections, so it gets a short timeout. The socket is ours, not
        # an aiohttp site's, so that every connection passes the cap (serving.connections).
        await runner.setup()
        self._runners.append(runner)
        listener, limit = await listen(runner, self.settings.host, port, limits, name)
        self._listeners.append(listener)
        self.connection_limits[name] = limit
        return int(listener.sockets[0].getsockname()[1])

    def force_stop(self) -> None:
        """Stop waiting for in-flight requests (a second SIGTERM or Ctrl-C)."""
        self._force.set()

    async def stop(self) -> None:
        """Drain: readiness false, new requests 503, in-flight ones finish; then unload and close.

        When requests are still running after ``--exit-timeout-secs`` (or `force_stop`),
        it returns at once with ``abandoned`` set, and the caller should exit the process.
        """
        if self.dataplane is not None:
            self.dataplane.start_drain()
            if self.grpc is not None:
                await self.grpc.update_health()
            if self.frontend is not None:
                self.frontend.push_state()
            if self.dataplane.in_flight:
                log.info("draining %d in-flight request(s), up to %gs", self.dataplane.in_flight,
                         self.settings.exit_timeout_secs)
            force = asyncio.ensure_future(self._force.wait())
            idle = asyncio.ensure_future(self.dataplane.wait_idle(self.settings.exit_timeout_secs))
            await asyncio.wait([force, idle], return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if not (idle.done() and idle.result()):
                idle.cancel()
                self.abandoned = self.dataplane.in_flight
                log.warning("stopping with %d request(s) still in flight", self.abandoned)
        if self.abandoned:
            log.info("stopped, leaving %d request(s) behind", self.abandoned)
            return  # work still runs on model threads: the caller exits the process
        if self.frontend is not None:
            await self.frontend.stop()  # after the drain: the workers' requests are the dataplane's in-flight ones
        if self.control is not None:
            await self.control.stop()
        if self.repository is not None:
            await self.repository.close()
        if self.shared_memory is not None:
            self.shared_memory.close()
        if self.sources is not None:
            self.sources.close()
        if self.grpc is not None:
            await self.grpc.stop(grace=2.0)
        for listener in self._listeners:
            listener.close()  # accept nothing more; the runners then close the open connections
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self._listeners.clear()
        self.metrics.close()
        log.info("stopped")


async def start(settings: Settings, registry: CollectorRegistry | None = None) -> Server:
    """Start a server and return it once its models have been loaded."""
    server = Server(settings, registry)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    return server


async def serve_until_signal(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain; a second signal stops without waiting.

    Tracing is switched on here from the ``OTEL_*`` environment (`serving.tracing`), before
    anything starts, and its last spans are flushed after the drain, for up to
    `tracing.FLUSH_TIMEOUT_S` (or ``OTEL_BSP_EXPORT_TIMEOUT``, if shorter) whatever the collector does.
    """
    try:
        tracing.configure("serve")
    except tracing.TracingError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        return await _serve(settings)
    finally:
        tracing.shutdown()


async def _serve(settings: Settings) -> int:
    stopping = asyncio.Event()
    server = Server(settings)
    stop_on_signals(stopping, server.force_stop, log)
    starting = asyncio.ensure_future(server.start())
    signalled = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([starting, signalled], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if starting.done() and starting.exception() is not None:
        exc = starting.exception()
        log.error("cannot start: %s", exc, exc_info=None if isinstance(exc, ConfigError) else exc)
        status = 1
    elif not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    else:
        await signalled
    signalled.cancel()
    await server.stop()
    if server.abandoned:
        # Model threads still compute the abandoned requests; the interpreter would join
        # them at exit, so leave at once: --exit-timeout-secs is a promise to Kubernetes.
        tracing.shutdown()
        logging.shutdown()
        os._exit(status)
    return status
