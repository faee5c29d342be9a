"""The canary's weight and phase: the analysis loop, operators' changes, webhooks and the decision log.

The proxies read `Controller.weight` on every inference request and report what each
upstream did (`observe`); the recorder reports compared predictions (`pairs`). Every
change, whoever makes it (the analysis, the admin API, a reloaded configuration file), is
logged with its reason (with ``--log-format json`` the whole decision, metrics included,
is in the ``canary`` field), kept in the decision log that ``GET /sidecar/status`` shows,
and counted on /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..config.canary import AnalysisConfig, CanaryConfig
from ..upstream.client import TooLarge, once
from .analysis import ANALYSED, Decision, IntervalMetrics, Outcome, State, Window, decide
from .metrics import CanaryMetrics

log = logging.getLogger("sidecar.canary")

PHASES = ("off", "idle", "manual", "progressing", "ready", "rolled_back", "promoted")
DECISIONS_KEPT = 50
COPIES = "copies"  # the source of pairs from copies of canary-served requests


def _phase(config: CanaryConfig | None, weight: float) -> str:
    if config is None:
        return "off"
    if weight <= 0:
        return "idle"
    return "progressing" if config.analysis is not None else "manual"


class Controller:
    """The canary's state; one per sidecar, kept across configuration reloads."""

    def __init__(self, metrics: CanaryMetrics) -> None:
        self.metrics = metrics
        self.config: CanaryConfig | None = None
        self.weight = 0.0  # read on the request path
        self.observing = False  # whether the proxies report requests (a canary is taking traffic)
        self.phase = "off"
        self.failures = 0
        self.intervals = 0
        self.window = Window(time.time())
        self.decisions: collections.deque[Decision] = collections.deque(maxlen=DECISIONS_KEPT)
        self._started = time.monotonic()
        self._changed = asyncio.Event()
        self._generation = 0
        self._hooks: set[asyncio.Task[str | None]] = set()
        # Called with every decision and whether it moved the weight or the phase (the registry's
        # writer); each must return at once.
        self.listeners: list[Callable[[Decision, bool], None]] = []
        self._export()

    # -- what the proxies and the recorder report ----------------------------------------------

    def observe(self, upstream: str, seconds: float | None, failed: bool) -> None:
        """An inference request served by ``primary`` or ``canary`` (a failed attempt counts too)."""
        self.window.observe(upstream, seconds, failed)

    def pairs(self, source: str, rows: int, agree: int | None, mean_abs_diff: float | None) -> None:
        """Predictions compared with the primary's: ``copies``, or a shadow's mirrored pairs; any thread."""
        config = self.config
        analysis = config.analysis if config is not None else None
        if analysis is None or self.phase not in ANALYSED:
            return
        if source == (analysis.compare_shadow or COPIES):
            self.window.pairs(rows, agree, mean_abs_diff)

    # -- changes -------------------------------------------------------------------------------

    def configure(self, config: CanaryConfig | None) -> None:
        """The configuration (at start or reloaded): a new weight in it, or a new upstream, resets the canary."""
        old = self.config
        if config == old:
            return
        self.config = config
        if config is None:
            self._change("config", "set", 0.0, "off", "the canary was removed from the configuration")
        elif old is None or old.weight != config.weight or not config.same_target(old):
            self._change("config", "set", config.weight, _phase(config, config.weight),
                         f"configuration: canary {config.http or config.grpc} at {config.weight:g}%")
        elif (old.analysis is None) != (config.analysis is None) and self.phase in ("manual", *ANALYSED):
            self._change("config", "set", self.weight, _phase(config, self.weight),
                         f"configuration: analysis {'on' if config.analysis else 'off'} at {self.weight:g}%")
        else:
            self._export()  # thresholds or options changed: the weight and the phase stay

    def set_weight(self, weight: float, reason: str, source: str = "admin") -> Decision:
        """An operator's weight; it also clears a rollback or a promotion."""
        if self.config is None:
            raise LookupError("no canary is configured")
        return self._change(source, "set", weight, _phase(self.config, weight), reason)

    def rollback(self, reason: str, source: str = "admin") -> Decision:
        """Weight 0 at once; the canary stays there until an operator sets a weight."""
        if self.config is None:
            raise LookupError("no canary is configured")
        return self._change(source, "rollback", 0.0, "rolled_back", reason)

    def promote(self, reason: str, source: str = "admin") -> Decision:
        """Every inference request to the canary (100%), the analysis stopped."""
        if self.config is None:
            raise LookupError("no canary is configured")
        self.metrics.canary_promotions.inc()
        return self._change(source, "promote", 100.0, "promoted", reason)

    def _change(self, source: str, action: str, weight: float, phase: str, reason: str,
                outcome: Outcome | None = None, metrics: IntervalMetrics | None = None,
                refused: str | None = None) -> Decision:
        now = time.time()
        decision = Decision(now, source, action, self.weight, weight, phase, reason,
                            outcome.verdict if outcome else None, outcome.failures if outcome else 0, metrics,
                            outcome.checks if outcome else (), refused)
        moved = weight != self.weight or phase != self.phase
        self.weight, self.phase = weight, phase
        self.failures = outcome.failures if outcome else 0
        if action == "wait" and self.decisions and self.decisions[-1].action == "wait":
            self.decisions[-1] = decision  # inconclusive in a row: one entry, the latest (it changes nothing)
        else:
            self.decisions.append(decision)
        self.metrics.canary_changes.labels(source, action).inc()
        if action == "rollback":
            self.metrics.canary_rollbacks.labels(source).inc()
            self._notify_rollback(decision)
        if moved or outcome is None:
            self.window.reset(now)  # an interval measures one weight
            self._started = time.monotonic()
            self._generation += 1
            self._changed.set()
        self._export()
        for listener in self.listeners:
            try:
                listener(decision, moved)
            except Exception:  # a listener's bug must not stop the canary's change
                log.exception("canary decision listener %r failed", listener)
        level = logging.DEBUG if action == "wait" else logging.INFO
        log.log(level, "canary %s (%s): %g%% -> %g%%, %s: %s", action, source, decision.weight_from, weight, phase,
                reason, extra={"canary": decision.to_dict()})
        return decision

    def _export(self) -> None:
        self.observing = self.config is not None and self.weight > 0
        self.metrics.canary_weight.set(self.weight)
        for phase in PHASES:
            self.metrics.canary_phase.labels(phase).set(1 if phase == self.phase else 0)

    # -- the analysis loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Judge an interval every ``analysis.interval`` while the canary is progressing or ready."""
        while True:
            analysis = self.config.analysis if self.config is not None else None
            self._changed.clear()
            if analysis is None or self.phase not in ANALYSED:
                await self._changed.wait()
                continue
            left = self._started + analysis.interval_secs - time.monotonic()
            if left > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                    continue  # something changed: a fresh interval
                except asyncio.TimeoutError:
                    pass
            await self.conclude(analysis)

    async def conclude(self, analysis: AnalysisConfig) -> Decision:
        """Judge the interval now ending."""
        metrics = self.window.take(time.time(), self.weight)
        self._started = time.monotonic()
        self.intervals += 1
        state = State(self.weight, self.failures, self.phase)
        outcome = decide(analysis, state, metrics)
        refused = None
        if outcome.action == "ramp" and analysis.pre_ramp_webhooks:
            generation = self._generation
            refused = await self._pre_ramp(analysis, outcome, metrics)
            if generation != self._generation:  # an operator acted meanwhile: their change stands
                return self.decisions[-1]
            if refused is not None:
                outcome = decide(analysis, state, metrics, ramp_refused=refused)
        self.metrics.canary_intervals.labels(outcome.verdict).inc()
        for measure, value in (("canary_requests", metrics.canary_requests), ("error_rate", metrics.error_rate),
                               ("canary_p99_seconds", metrics.canary_p99),
                               ("primary_p99_seconds", metrics.primary_p99),
                               ("disagreement", metrics.disagreement), ("mean_abs_diff", metrics.mean_abs_diff)):
            self.metrics.canary_last_interval.labels(measure).set(float("nan") if value is None else value)
        return self._change("analysis", outcome.action, outcome.weight, outcome.phase, outcome.reason, outcome,
                            metrics, refused)

    # -- webhooks ------------------------------------------------------------------------------

    def _payload(self, event: str, weight_from: float, weight_to: float, reason: str,
                 metrics: IntervalMetrics | None) -> dict[str, Any]:
        config = self.config
        return {"event": event, "time": time.time(), "canary": {"http": config.http if config else None,
                                                                 "grpc": config.grpc if config else None},
                "weight_from": weight_from, "weight_to": weight_to, "reason": reason,
                "metrics": metrics.to_dict() if metrics is not None else None}

    async def _post(self, hook: str, url: str, payload: dict[str, Any], timeout: float) -> str | None:
        """POST the event; None when the hook answered 2xx, else why not."""
        try:
            status, _ = await once("POST", url, (("Content-Type", "application/json"),), orjson.dumps(payload),
                                   timeout)
            result = "ok" if 200 <= status < 300 else "refused"
            problem = None if result == "ok" else f"{url} answered {status}"
        except (asyncio.TimeoutError, OSError, TooLarge, ValueError) as exc:
            result, problem = "error", f"{url} failed ({type(exc).__name__}: {exc})"
        self.metrics.canary_webhooks.labels(hook, result).inc()
        if problem is not None:
            log.warning("canary %s webhook: %s", hook, problem)
        return problem

    async def _pre_ramp(self, analysis: AnalysisConfig, outcome: Outcome, metrics: IntervalMetrics) -> str | None:
        payload = self._payload("pre_ramp", self.weight, outcome.weight, outcome.reason, metrics)
        problems = await asyncio.gather(*(self._post("pre_ramp", url, payload, analysis.webhook_timeout_secs)
                                          for url in analysis.pre_ramp_webhooks))
        refused = [problem for problem in problems if problem is not None]
        return "the pre-ramp webhook " + "; ".join(refused) if refused else None

    def _notify_rollback(self, decision: Decision) -> None:
        analysis = self.config.analysis if self.config is not None else None
        if analysis is None or not analysis.rollback_webhooks:
            return
        payload = self._payload("rollback", decision.weight_from, 0.0, decision.reason, decision.metrics)
        for url in analysis.rollback_webhooks:
            task = asyncio.ensure_future(self._post("rollback", url, payload, analysis.webhook_timeout_secs))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def close(self) -> None:
        """Let rollback notifications finish (each has its timeout)."""
        if self._hooks:
            await asyncio.gather(*self._hooks, return_exceptions=True)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``GET /sidecar/status`` shows of the canary."""
        config = self.config
        analysis = config.analysis if config is not None else None
        return {
            "configured": config is not None,
            "http": config.http if config else None,
            "grpc": config.grpc if config else None,
            "model": str(config.model) if config is not None and config.model is not None else None,
            "sticky_header": config.sticky_header if config else None,
            "copy_fraction": config.copy_fraction if config else None,
            "weight": self.weight,
            "phase": self.phase,
            "ready_to_promote": self.phase == "ready",
            "failures": self.failures,
            "analysis": None if analysis is None else {
                **dataclasses.asdict(analysis),
                "intervals": self.intervals,
                "current": self.window.metrics(time.time(), self.weight).to_dict(),
            },
            "decisions": [decision.to_dict() for decision in self.decisions],
        }
