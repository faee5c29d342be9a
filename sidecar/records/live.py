"""Live drift gauges: recent predictions per model and upstream against a reference profile.

The recorder's thread feeds each decoded record here (`LiveDriftHub.observe`): the
served answer (``primary`` or ``canary``), each shadow's and the primary's copies of
canary-served requests, each into the sliding window (`sidecar.drift.LiveDrift`) of its
model and upstream. At most once a second (`REFRESH_SECS`) the same thread computes PSI
and Jensen–Shannon per output column and sets ``sidecar_live_drift_psi`` and
``sidecar_live_drift_js`` {model, upstream, output}. `LiveDrift` is not thread-safe, so
nothing else touches it; the admin API reads `LiveDriftHub.values`, a list replaced whole.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config.file import ConfigError, DriftConfig
from ..drift import DriftError, LiveDrift, Profile
from .metrics import RecordMetrics
from .tables import Record

log = logging.getLogger(__name__)

REFRESH_SECS = 1.0
MAX_WINDOWS = 64  # (model, upstream) pairs; bounded like every label set


class LiveDriftHub:
    """Every (model, upstream) window of one reference profile; used by the recorder's thread only."""

    def __init__(self, config: DriftConfig, profile: Profile, metrics: RecordMetrics) -> None:
        self.config = config
        self.profile = profile
        self.metrics = metrics
        model = config.model or profile.source.get("model")
        self.model: str | None = model if isinstance(model, str) and model else None
        self.values: list[dict[str, Any]] = []
        self._windows: dict[tuple[str, str], LiveDrift] = {}
        self._dirty = False
        self._due = 0.0
        self._full = False

    @classmethod
    def load(cls, config: DriftConfig, metrics: RecordMetrics) -> LiveDriftHub:
        """Read the profile; a file that is missing or not a profile is a `ConfigError`."""
        try:
            profile = Profile.load(config.profile)
        except (DriftError, OSError, ValueError) as exc:
            raise ConfigError(f"drift.profile: {exc}") from None
        if not profile.columns:
            raise ConfigError(f"drift.profile: {config.profile} has no columns")
        return cls(config, profile, metrics)

    def _window(self, model: str, upstream: str) -> LiveDrift | None:
        window = self._windows.get((model, upstream))
        if window is None:
            if len(self._windows) >= MAX_WINDOWS:
                if not self._full:
                    self._full = True
                    log.warning("live drift: %d model/upstream windows; %s/%s and later ones are not observed",
                                MAX_WINDOWS, model, upstream)
                return None
            window = self._windows[(model, upstream)] = LiveDrift(self.profile, window=self.config.window)
        return window

    def observe(self, record: Record) -> None:
        """Add every answer's outputs of one record to its model's and upstream's window."""
        if self.model is not None and record.model != self.model:
            return
        for answer in (record.primary, *record.shadows):
            if not answer.outputs:
                continue
            window = self._window(record.model, answer.upstream)
            if window is not None:
                window.observe({tensor.name: tensor.array() for tensor in answer.outputs})
                self._dirty = True

    def seconds_to_refresh(self, now: float) -> float | None:
        """How long until the gauges are due (None: nothing new to show)."""
        return max(0.0, self._due - now) if self._dirty else None

    def refresh(self, now: float, force: bool = False) -> None:
        """Set the gauges from every window, if due (at most once a `REFRESH_SECS`)."""
        if not self._dirty or (now < self._due and not force):
            return
        self._dirty, self._due = False, now + REFRESH_SECS
        m, values = self.metrics, []
        for (model, upstream), window in self._windows.items():
            for output, value in window.snapshot().items():
                if value.psi is None or value.js is None:
                    continue
                m.live_psi.labels(model, upstream, output).set(value.psi)
                m.live_js.labels(model, upstream, output).set(value.js)
                m.live_count.labels(model, upstream, output).set(value.count)
                values.append({"model": model, "upstream": upstream, "output": output, "psi": value.psi,
                               "js": value.js, "count": value.count})
        self.values = values

    def status(self) -> dict[str, Any]:
        """What ``GET /sidecar/status`` shows of live drift."""
        return {"profile": str(self.config.profile), "window": self.config.window, "model": self.model,
                "fraction": self.config.fraction, "values": self.values}


def clear_gauges(metrics: RecordMetrics) -> None:
    """Forget every live drift series (the profile changed or was removed)."""
    for gauge in (metrics.live_psi, metrics.live_js, metrics.live_count):
        gauge.clear()
