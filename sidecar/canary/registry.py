"""Canary decisions into the model registry, and the canary verdict for promotion.

When the canary is named by a registered model (``canary: {model: models:/classifier@challenger}``),
each decision that changes something (the analysis's ramp, ready-to-promote and rollback; an
operator's set, rollback and promote through the admin API) is appended to the model's audit log
and tagged on the judged version: ``shadowserve.canary.phase``, ``shadowserve.canary.decision``
(the decision as compact JSON, metrics included) and ``shadowserve.canary.updated``. The judged
version is the canary's URI resolved through the registry when the configuration is applied (at
start and on each reload); the last good resolution stays while the registry is down.

The registry is a neighbour that may hang, lie or be down, and MLflow's client is synchronous:
every call goes through a bounded queue to ONE worker thread, so no request and no analysis
interval ever waits on it. A full queue drops the write, and every write is counted by outcome
(``sidecar_registry_writes_total{outcome="written|failed|dropped"}``). On SIGTERM the queue is
flushed for at most ``--registry-flush-secs``; what is left then is dropped and counted.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from model_registry.audit import AuditEntry
from model_registry.errors import RegistryError
from model_registry.store import Registry, Version
from model_registry.uris import ModelUri

from ..config.file import Config
from .analysis import Decision
from .controller import Controller
from .metrics import RegistryMetrics

log = logging.getLogger("sidecar.registry")

QUEUE_SIZE = 256  # jobs waiting for the worker; a registry this far behind is down
VERDICT_FORMAT = "shadowserve.canary.verdict/1"
PASSED = ("ready", "promoted")
TAG_PHASE, TAG_DECISION, TAG_UPDATED = ("shadowserve.canary.phase", "shadowserve.canary.decision",
                                        "shadowserve.canary.updated")
MAX_REASON = 1000  # characters of a reason kept in the decision tag
WRITE, RESOLVE = "write", "resolve"
Job = tuple[str, Callable[[Registry], None]]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def worth_writing(decision: Decision, changed: bool) -> bool:
    """An operator's change through the admin API, or an analysis decision that moved the weight or phase.

    A reloaded or restarted configuration (source ``config``) is not written: every replica's
    sidecar would log it on every start. A repeated ready, a hold or a wait changes nothing.
    """
    if decision.source == "admin":
        return decision.action in ("set", "rollback", "promote")
    return decision.source == "analysis" and changed and decision.action in ("ramp", "ready", "rollback")


def details(decision: Decision) -> dict[str, Any]:
    """What the registry keeps of a decision: the weights, the verdict, the checks and the interval's metrics."""
    return {"source": decision.source, "weight_from": decision.weight_from, "weight_to": decision.weight_to,
            "phase": decision.phase, "verdict": decision.verdict, "failures": decision.failures,
            "metrics": decision.metrics.to_dict() if decision.metrics is not None else None,
            "checks": {check.name: check.status for check in decision.checks},
            "ramp_refused": decision.ramp_refused}


def decision_tags(decision: Decision) -> dict[str, str]:
    """The tags set on the judged version for one decision."""
    summary = {"time": decision.time, "action": decision.action, "reason": decision.reason[:MAX_REASON],
               **details(decision)}
    return {TAG_PHASE: decision.phase, TAG_UPDATED: _iso(decision.time),
            TAG_DECISION: json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str)}


class RegistryLink:
    """The sidecar's writer to the registry: one worker thread behind a bounded queue.

    Started by the first configuration that names a model; nothing touches MLflow before that.
    ``opener`` (tests) replaces ``Registry.open(uri)``.
    """

    def __init__(self, uri: str | None, metrics: RegistryMetrics, *, queue_size: int = QUEUE_SIZE,
                 actor: str | None = None, opener: Callable[[], Registry] | None = None) -> None:
        self.uri = uri
        self.metrics = metrics
        self.actor = actor or f"sidecar@{socket.gethostname()}"
        self.canary: ModelUri | None = None  # the canary's registered model, in the configuration in force
        self.models: tuple[ModelUri, ...] = ()  # every model the configuration in force names
        self.resolved: Mapping[ModelUri, Version] = {}  # the last good resolutions; replaced whole, never mutated
        self._open = opener or (lambda: Registry.open(uri, announce=log.info))
        self._queue: queue.Queue[Job | None] = queue.Queue(queue_size)
        self._registry: Registry | None = None
        self._thread: threading.Thread | None = None
        self._failing = False
        self._closed = threading.Event()
        metrics.registry_queued.set_function(self._queue.qsize)

    # -- on the event loop: never blocks -------------------------------------------------------

    def configure(self, config: Config) -> None:
        """The configuration in force: resolve every model it names (again, on a reload)."""
        self.canary = config.canary.model if config.canary is not None else None
        self.models = config.models()
        for uri in self.models:
            self._submit(RESOLVE, functools.partial(self._resolve, uri=uri))

    def decision(self, decision: Decision, changed: bool) -> None:
        """A listener of the controller: queue the decision's audit entry and tags, if it is worth writing."""
        uri = self.canary
        if uri is not None and worth_writing(decision, changed):
            self._submit(WRITE, functools.partial(self._write, uri=uri, decision=decision))

    def version(self, uri: ModelUri | None) -> int | None:
        """The version ``uri`` was last resolved to (a fixed version needs no registry); None if unknown."""
        if uri is None:
            return None
        found = self.resolved.get(uri)
        return found.version if found is not None else uri.version

    def status(self) -> dict[str, Any]:
        """What ``GET /sidecar/status`` shows of the registry."""
        return {"uri": self.uri, "started": self._thread is not None, "healthy": not self._failing,
                "queued": self._queue.qsize(),
                "models": {str(uri): self.version(uri) for uri in self.models}}

    def _submit(self, kind: str, work: Callable[[Registry], None]) -> None:
        if self._closed.is_set():
            self._count(kind, "dropped")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sidecar-registry", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((kind, work))
        except queue.Full:
            self._count(kind, "dropped")
            log.debug("registry queue full (%d jobs): a %s dropped", self._queue.maxsize, kind)

    def _count(self, kind: str, outcome: str) -> None:
        counter = self.metrics.registry_writes if kind == WRITE else self.metrics.registry_resolutions
        counter.labels(outcome).inc()

    # -- on the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            job = self._queue.get()
            if job is None:
                return
            kind, work = job
            try:
                if self._registry is None:
                    self._registry = self._open()
                work(self._registry)
            except Exception as exc:  # noqa: BLE001 - whatever the neighbour does, the worker goes on
                self._count(kind, "failed")
                self._trouble(kind, exc)
            else:
                self._count(kind, "written" if kind == WRITE else "resolved")
                if self._failing:
                    self._failing = False
                    log.info("the registry at %s answers again", self._where())

    def _trouble(self, kind: str, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
        first = (message.splitlines() or [""])[0][:300]
        if not self._failing:  # once per outage, not once per write
            self._failing = True
            log.warning("registry %s failed, the canary goes on without it: %s", kind, first)
        else:
            log.debug("registry %s failed: %s", kind, first)

    def _where(self) -> str:
        return self._registry.uri if self._registry is not None else (self.uri or "the default location")

    def _resolve(self, registry: Registry, uri: ModelUri) -> None:
        try:
            found = registry.resolve(uri)
        except Exception as exc:
            kept = self.resolved.get(uri)
            if kept is not None:
                log.warning("cannot resolve %s; keeping version %d (%s)", uri, kept.version,
                            (str(exc).splitlines() or [""])[0][:300])
            raise
        previous = self.resolved.get(uri)
        self.resolved = {**self.resolved, uri: found}
        if previous is None or previous.version != found.version:
            log.info("%s is version %d", uri, found.version, extra={"model": str(uri), "version": found.version})

    def _write(self, registry: Registry, uri: ModelUri, decision: Decision) -> None:
        if uri.alias is not None and uri not in self.resolved:
            try:  # the registry was down when the configuration was applied
                self._resolve(registry, uri)
            except RegistryError:
                pass  # the entry is still written, without a version
        version = self.version(uri)
        registry.record(uri.name, AuditEntry(decision.time, self.actor, decision.action, version=version,
                                             alias=uri.alias, reason=decision.reason, details=details(decision)))
        if version is not None:
            registry.tag_version(uri.name, version, decision_tags(decision))

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, timeout: float) -> bool:
        """Flush the queue for up to ``timeout`` seconds (blocking: run it off the event loop); True if all written.

        What is still queued then is dropped and counted; a call that hangs is abandoned with its
        thread (a daemon), bounded in any case by MLflow's own HTTP timeout.
        """
        thread = self._thread
        if thread is None:
            self._closed.set()
            return True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=max(timeout, 0.0))
        except queue.Full:
            pass
        thread.join(max(deadline - time.monotonic(), 0.0))
        self._closed.set()
        flushed = not thread.is_alive()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._count(job[0], "dropped")
        if not flushed:
            log.warning("registry writes still pending after %gs; dropped", timeout)
        return flushed


def verdict(controller: Controller, link: RegistryLink) -> dict[str, Any]:
    """``GET /sidecar/canary/verdict``: the canary's verdict, evidence for ``shadowserve-registry promote``."""
    config = controller.config
    uri = config.model if config is not None else None
    version = link.version(uri)
    analysed = [decision for decision in controller.decisions if decision.source == "analysis"]
    return {"format": VERDICT_FORMAT, "created": _iso(time.time()),
            "model": uri.name if uri is not None else None,
            "version": str(version) if version is not None else None,
            "registry": str(uri) if uri is not None else None,
            "phase": controller.phase, "passed": controller.phase in PASSED, "weight": controller.weight,
            "decision": analysed[-1].to_dict() if analysed else None,
            "decisions": [decision.to_dict() for decision in controller.decisions]}
