"""The composition root: build every part from the settings, listen, reload, drain and stop.

Production (``sidecar``, ``python -m sidecar``) and the tests start the sidecar the same way::

    sidecar = await sidecar.app.start(settings, config)   # listening
    ...
    await sidecar.stop()                                  # drain, finish shadows, flush records

On SIGTERM (or SIGINT): readiness turns false at once; the sidecar keeps proxying while
the primary drains (until the primary is no longer ready and no request is in flight,
for up to ``--drain-timeout-secs``), then stops listening, gives pending shadow copies
``--shadow-drain-secs`` before cancelling them, writes every queued record, finishes the
segment and exits 0. A second signal skips the waiting. SIGHUP re-reads ``--config``.
The admin API (`sidecar.canary.admin`) listens on ``--admin-listen``; the canary's controller
(`sidecar.canary.controller`) and the live drift windows (`sidecar.records.live`) outlive reloads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine, MutableMapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from model_registry.store import bound_calls
from serving import logs  # the same log formats as serve (pure: imports nothing heavy)
from serving.shutdown import stop_on_signals  # the same stop signals as serve (pure)
from serving.tracing import Tracing, TracingError, configure  # no OpenTelemetry imported while tracing is off

from .canary.admin import admin_app
from .canary.controller import Controller
from .canary.metrics import CanaryMetrics, RegistryMetrics
from .canary.registry import RegistryLink, verdict
from .config.file import Config, ConfigError, restart_only_changes
from .config.metrics import ConfigMetrics
from .config.overrides import load
from .config.reload import ConfigWatcher
from .config.settings import Settings, parse
from .mirror.budget import MemoryBudget
from .mirror.metrics import MirrorMetrics
from .proxy.grpc import GrpcProxy, grpc_server_options
from .proxy.guard import ConnectionGuard, GuardedSite
from .proxy.health import Health
from .proxy.http import HttpProxy
from .proxy.metrics import ProxyMetrics
from .proxy.upstreams import Upstreams, build, close, retire
from .records.live import LiveDriftHub
from .records.metrics import RecordMetrics
from .records.recorder import Recorder
from .spans import Spans, flush

log = logging.getLogger("sidecar")

RECORDER_FLUSH_SECS = 30.0
READY_POLL_SECS = 0.25


class SidecarMetrics:
    """Every part's series, all on the one registry that /metrics serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.proxy = ProxyMetrics(self.registry)
        self.mirror = MirrorMetrics(self.registry)
        self.records = RecordMetrics(self.registry, self.mirror)
        self.canary = CanaryMetrics(self.registry)
        self.config = ConfigMetrics(self.registry)
        self.model_registry = RegistryMetrics(self.registry)


class Sidecar:
    """A running sidecar: the proxies, the upstreams in force, the recorder and the metrics."""

    def __init__(self, settings: Settings, config: Config, registry: CollectorRegistry | None = None,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics = SidecarMetrics(registry)
        self.registry = metrics.registry
        self.proxy_metrics, self.mirror_metrics, self.record_metrics = metrics.proxy, metrics.mirror, metrics.records
        self.rollout = Controller(metrics.canary)
        # The model registry (MLflow): only opened, on its own thread, once a model is named.
        self.registry_link = RegistryLink(settings.registry_uri, metrics.model_registry)
        self.rollout.listeners.append(self.registry_link.decision)
        self.mirror_metrics.shadow_memory_budget.set(settings.shadow_memory_budget_bytes)
        self.budget = MemoryBudget(settings.shadow_memory_budget_bytes, self.mirror_metrics.shadow_memory_held.set)
        self.recorder = Recorder(config.recording, self.record_metrics, self.rollout.pairs)
        self.upstreams: Upstreams = None  # type: ignore[assignment]  # set by start()
        self.health = Health(lambda: self.upstreams)
        proxied = (lambda: self.upstreams, self.proxy_metrics, self.recorder.submit, self.health, self.rollout)
        self.http = HttpProxy(*proxied)
        self.grpc = GrpcProxy(*proxied)
        self.tracing = tracing  # None: off, and nothing of OpenTelemetry is imported (`sidecar.spans`)
        if tracing is not None:
            self.http.spans = self.grpc.spans = Spans(tracing)
        self.watcher = ConfigWatcher(settings, self.apply, metrics.config) if settings.config_file else None
        self.http_port = self.grpc_port = self.metrics_port = self.admin_port = 0
        self._http_runner: web.BaseRunner | None = None
        self._metrics_runner: web.BaseRunner | None = None
        self._admin_runner: web.BaseRunner | None = None
        self._analysing: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # retiring upstreams
        self._watching: asyncio.Future[None] | None = None
        self._force = asyncio.Event()
        self._stopped = False

    async def start(self) -> None:
        settings = self.settings
        if self.config.drift is not None:
            self.recorder.drift = LiveDriftHub.load(self.config.drift, self.record_metrics)
        self.upstreams = build(self.config, self.mirror_metrics, budget=self.budget)
        self.mirror_metrics.add_shadows(s.name for s in self.config.shadows)  # 0 before the first drop
        self.registry_link.configure(self.config)
        self.rollout.configure(self.config.canary)
        self._analysing = asyncio.ensure_future(self.rollout.run())
        self.recorder.start()
        # aiohttp's own cap on a body read whole is lifted: the proxy reads a body whole only
        # up to the upstreams' buffer limit and streams larger ones.
        server = web.Server(self.http.handle, handler_cancellation=True,
                            request_factory=self.http.request_factory(1 << 62),
                            keepalive_timeout=settings.idle_timeout_secs)
        self.http.guard = self._guard("http", settings.max_connections)
        self._http_runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        self.http_port = await self._listen(self._http_runner, settings.listen.host, settings.listen.port,
                                            self.http.guard)
        if settings.grpc_listen is not None:
            self.grpc_port = await self.grpc.start(settings.grpc_listen.host, settings.grpc_listen.port,
                                                   grpc_server_options(settings))
        guard = self._guard("metrics", settings.admin_max_connections)
        self._metrics_runner = web.AppRunner(self._metrics_app(guard), access_log=None, handle_signals=False,
                                             keepalive_timeout=settings.idle_timeout_secs)
        self.metrics_port = await self._listen(self._metrics_runner, settings.listen.host, settings.metrics_port,
                                               guard)
        token = settings.admin_bearer()
        admin = settings.admin_listen
        if admin is not None:
            guard = self._guard("admin", settings.admin_max_connections)
            app = admin_app(self.rollout, self.status, token, self.verdict)
            app.middlewares.insert(0, guard.middleware)
            self._admin_runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                               keepalive_timeout=settings.idle_timeout_secs)
            try:
                self.admin_port = await self._listen(self._admin_runner, admin.host, admin.port, guard)
            except OSError as exc:
                if settings.admin_required:
                    raise
                # Only the default address: several sidecars on one host (not in a pod) still start.
                log.warning("admin API off: cannot listen on its default address %s (%s); give --admin-listen "
                            "HOST:PORT, or off", admin, exc.strerror or exc)
                admin = None
        if self.watcher is not None:
            self._watching = asyncio.ensure_future(self.watcher.run())
        host = settings.listen.host
        grpc_where = f"{settings.grpc_listen.host}:{self.grpc_port}" if settings.grpc_listen else "off"
        admin_where = f"{admin.host}:{self.admin_port}" if admin is not None else "off"
        log.info("listening http=%s:%d grpc=%s metrics=%s:%d admin=%s", host, self.http_port, grpc_where, host,
                 self.metrics_port, admin_where,
                 extra={"http_port": self.http_port, "grpc_port": self.grpc_port or None,
                        "metrics_port": self.metrics_port, "admin_port": self.admin_port or None})
        if admin is not None:
            log.info("admin API on http://%s:%d/sidecar/status%s", admin.host, self.admin_port,
                     " (bearer token required)" if token else "",
                     extra={"admin_port": self.admin_port})
        self._describe(self.config)

    def _guard(self, listener: str, max_connections: int) -> ConnectionGuard:
        settings = self.settings
        return ConnectionGuard(listener, max_connections, settings.header_timeout_secs, settings.body_timeout_secs,
                               self.proxy_metrics)

    async def _listen(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard) -> int:
        await runner.setup()
        site = GuardedSite(runner, host, port, guard, backlog=1024)
        await site.start()
        return int(runner.addresses[0][1])

    def _metrics_app(self, guard: ConnectionGuard) -> web.Application:
        registry = self.registry

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application(middlewares=[guard.middleware])
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", self.http.handle)
        app.router.add_get("/readyz", self.http.handle)
        return app

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _describe(self, config: Config) -> None:
        shadows = ", ".join(f"{s.name}={s.http or s.grpc}@{s.fraction:g}" for s in config.shadows) or "none"
        recording = config.recording.dir if config.recording.dir is not None else "off"
        canary = config.canary
        described = (f"{canary.http or canary.grpc}@{self.rollout.weight:g}%"
                     f"{f' serving {canary.model}' if canary.model else ''}"
                     f"{' with analysis' if canary.analysis else ''}" if canary is not None else "none")
        drift = config.drift.profile if config.drift is not None else "off"
        log.info("primary=%s grpc=%s shadows: %s; canary: %s; recording: %s; live drift: %s", config.primary.http,
                 config.primary.grpc or "off", shadows, described, recording, drift)

    def status(self) -> dict[str, Any]:
        """The admin API's ``GET /sidecar/status``: the canary, live drift and the upstreams."""
        config, hub = self.config, self.recorder.drift
        return {
            "canary": self.rollout.status(),
            "drift": hub.status() if hub is not None else None,
            "primary": {"http": config.primary.http, "grpc": config.primary.grpc},
            "shadows": [{"name": s.name, "http": s.http, "grpc": s.grpc, "fraction": s.fraction,
                         "model": str(s.model) if s.model is not None else None} for s in config.shadows],
            "recording": str(config.recording.dir) if config.recording.dir is not None else None,
            "registry": self.registry_link.status(),
        }

    def verdict(self) -> dict[str, Any]:
        """The admin API's ``GET /sidecar/canary/verdict`` (`sidecar.canary.registry.verdict`)."""
        return verdict(self.rollout, self.registry_link)

    async def apply(self, config: Config) -> None:
        """Put a new configuration in force for the next requests; nothing in flight is disturbed.

        A live drift profile that cannot be read raises `ConfigError` before anything changes.
        """
        hub = self.recorder.drift
        if config.drift != self.config.drift:
            hub = LiveDriftHub.load(config.drift, self.record_metrics) if config.drift is not None else None
        ignored = restart_only_changes(self.config, config)
        if ignored:
            log.warning("%s changed in %s; these take effect at the next restart", ", ".join(ignored),
                        self.settings.config_file)
        previous = self.upstreams
        self.upstreams = build(config, self.mirror_metrics, previous, self.budget)
        self.mirror_metrics.add_shadows(s.name for s in config.shadows)
        self.recorder.policy = config.recording
        self.recorder.drift = hub
        self.config = config
        self.registry_link.configure(config)
        self.rollout.configure(config.canary)
        log.info("configuration reloaded")
        self._describe(config)
        self._spawn(retire(previous, self.upstreams, self.settings.shadow_drain_secs))

    def force_stop(self) -> None:
        """Stop waiting: a second SIGTERM or Ctrl-C."""
        self._force.set()

    async def _wait_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._force.is_set():
            if self.http.in_flight == 0 and self.grpc.in_flight == 0:
                ready, _ = await self.health.primary_ready()
                if not ready:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("the primary is still ready after %gs; stopping anyway", timeout)
                return
            waits = [asyncio.ensure_future(self._force.wait())]
            await asyncio.wait(waits, timeout=min(READY_POLL_SECS, left))
            for waiter in waits:
                waiter.cancel()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Drain (see the module docstring), then close everything; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.health.draining = True
        timeout = self.settings.drain_timeout_secs if drain_timeout is None else drain_timeout
        if self.upstreams is not None and timeout > 0:
            log.info("draining: not ready; proxying until the primary has drained (up to %gs)", timeout)
            await self._wait_drained(timeout)
        for task in (self._watching, self._analysing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.grpc.stop(0 if self._force.is_set() else 1.0)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.upstreams is not None:
            grace = 0.0 if self._force.is_set() else self.settings.shadow_drain_secs
            await close(self.upstreams, grace)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        flushed = await loop.run_in_executor(None, self.recorder.stop, RECORDER_FLUSH_SECS)
        await self.rollout.close()  # rollback webhooks first: they may queue nothing more, but decisions did
        registry_grace = 0.0 if self._force.is_set() else self.settings.registry_flush_secs
        await loop.run_in_executor(None, self.registry_link.stop, registry_grace)
        for runner in (self._metrics_runner, self._admin_runner):
            if runner is not None:
                await runner.cleanup()
        log.info("stopped%s", "" if flushed else " (some records were lost)")


async def start(settings: Settings, config: Config | None = None,
                registry: CollectorRegistry | None = None, tracing: Tracing | None = None) -> Sidecar:
    """Start a sidecar (``config`` defaults to the settings' file and flags) and return it, listening;
    it makes spans with ``tracing`` when given (`serving.tracing.configure`), which its caller flushes."""
    sidecar = Sidecar(settings, config if config is not None else load(settings), registry, tracing)
    try:
        await sidecar.start()
    except BaseException:
        await sidecar.stop(drain_timeout=0)
        raise
    return sidecar


async def serve_until_signal(settings: Settings, config: Config, tracing: Tracing | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain and stop; a second signal stops without waiting."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    sidecar = Sidecar(settings, config, tracing=tracing)

    def on_hangup() -> None:
        if sidecar.watcher is None:
            log.warning("SIGHUP: there is no --config file to re-read")
        else:
            sidecar.watcher.trigger()

    # Handlers first: a signal during start-up is honoured, not fatal.
    stop_on_signals(stopping, sidecar.force_stop, log)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await sidecar.start()
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        await sidecar.stop(drain_timeout=0)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await sidecar.stop(drain_timeout=0)
        return 1
    # What start-up allocated lives as long as the process: keep it out of the collector's
    # full passes, which would otherwise walk it and pause requests.
    gc.freeze()
    await stopping.wait()
    await sidecar.stop()
    return 0


def _run(settings: Settings, config: Config, tracing: Tracing | None) -> int:
    """Run on uvloop when it is installed, else on asyncio's default loop; then flush the spans
    still queued, for at most `sidecar.spans.FLUSH_SECS` (a collector that hangs costs no more)."""
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(serve_until_signal(settings, config, tracing))
        if hasattr(uvloop, "run"):
            return uvloop.run(serve_until_signal(settings, config, tracing))
        uvloop.install()  # uvloop before 0.18 has no run()
        return asyncio.run(serve_until_signal(settings, config, tracing))
    finally:
        flush(tracing)


def bound_registry_calls(environ: MutableMapping[str, str]) -> None:
    """A registry that hangs costs a canary write a few seconds (they wait on their own thread
    anyway; this bounds the flush at SIGTERM), unless the user set MLflow's own bounds."""
    bound_calls(environ, timeout_secs=5, retries=1)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``sidecar`` command."""
    settings = parse(argv)
    bound_registry_calls(os.environ)
    logs.configure(settings.log_format, settings.log_level)
    try:
        config = load(settings)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    try:
        tracing = configure("sidecar")
    except (TracingError, ValueError) as exc:  # ValueError: the SDK's own, e.g. an unknown OTEL_PROPAGATORS
        log.error("invalid tracing configuration: %s", exc)
        sys.exit(2)
    sys.exit(_run(settings, config, tracing))
