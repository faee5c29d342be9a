"""The model repository: Triton's layout, loaded, reloaded and tracked per version.

```
<repo>/<model>/config.pbtxt          Triton ModelConfig, protobuf text format
<repo>/<model>/<version>/model.pt    platform "pytorch_libtorch": TorchScript
<repo>/<model>/<version>/model.py    backend "python": a serving.Model subclass
<repo>/<ensemble>/<version>/         platform "ensemble": steps over the other models (no file)
```

Loading a model that is already loaded is a reload: versions whose config and files
are unchanged keep serving untouched; a changed or new version is loaded beside the old
one, takes over once it is ready, and the old one then drains and unloads; versions the
version policy no longer selects drain and unload once every version it selects is ready.
A broken model directory is logged, shown with its reason in the index, and leaves the
other models serving; a failed reload leaves the previous load serving. An ensemble's step
models load before it, whichever mode and order the loads come in.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from pathlib import Path
from typing import Any

from .backends import complete
from .config import ENSEMBLE, ModelSpec, parse_config, parse_config_json
from .device import Placement
from .ensemble import Plan, plan_of
from .errors import ConfigError, InvalidInput, NotFound, ServingError, Unavailable
from .inprocess import InProcess
from .lifecycle import LOADING, READY, UNAVAILABLE, UNLOADING, ModelVersion, fingerprint, retire_version, start_version
from .metrics import Metrics
from .paths import name_problem, request_version, scrub, shown, version_directory
from .platforms import is_model_directory

log = logging.getLogger(__name__)

# the ensembles whose step models this task is loading, outermost first: an ensemble that is
# (through others) its own step is refused instead of waiting for its own lock
_LOADING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ensembles_loading", default=())

__all__ = ["READY", "LOADING", "UNLOADING", "UNAVAILABLE", "ModelEntry", "ModelVersion", "Repository"]


@dataclasses.dataclass
class ModelEntry:
    """A model directory: its parsed config (when it parses) and its versions."""

    name: str
    spec: ModelSpec | None = None
    versions: dict[int, ModelVersion] = dataclasses.field(default_factory=dict)
    reason: str = ""  # why the model as a whole is unavailable (its config, its versions)
    failed_config: str | None = None  # the config text behind ``reason``
    default: ModelVersion | None = None  # the newest ready version: where unversioned requests go
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def refresh(self) -> None:
        ready = [v for v in self.versions.values() if v.state == READY]
        self.default = max(ready, key=lambda v: v.version) if ready else None


class Repository:
    def __init__(self, root: Path, placement: Placement, metrics: Metrics) -> None:
        self.root = root
        self.placement = placement
        self.metrics = metrics
        self.models: dict[str, ModelEntry] = {}
        # how ensembles, BLS calls and handlers reach the other models: through `get`, as clients do
        self.inprocess = InProcess(self.get)

    def scan(self) -> list[str]:
        """Names of the model directories (see `is_model_directory`) named as models may be."""
        return self._directories()[0]

    def _directories(self) -> tuple[list[str], dict[str, str]]:
        """The model directories, and the others that look like one with why they are skipped."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        models, skipped = [], {}
        for path in self.root.iterdir():
            if path.name.startswith(".") or not is_model_directory(path):
                continue
            problem = name_problem(path.name)
            if problem is None:
                models.append(path.name)
            else:
                skipped[shown(path.name)] = f"not loaded: the directory name is not a valid model name ({problem})"
        return sorted(models), skipped

    def _reason(self, exc: BaseException) -> str:
        """What went wrong, for the index and the client: no host paths, no exception class names."""
        if isinstance(exc, OSError):
            where = exc.filename and scrub(str(exc.filename), self.root)
            return f"cannot read {where or 'a file of the model'}: {exc.strerror or 'unreadable'}"
        message = scrub(str(exc), self.root)
        if isinstance(exc, ServingError):
            return message
        return f"load failed: {message}" if message else "load failed; the server log has the details"

    # -- load and unload -------------------------------------------------------------------

    async def load(self, name: str, config_json: str | None = None, retry_failed: bool = True) -> bool:
        """Load or reload a model as its version policy selects; True when anything changed.

        Raises `InvalidInput` for a name that is not a model name, `NotFound` for a model the
        repository does not hold, and `InvalidInput` when the config fails ("failed to load
        ..., failed to poll from model repository", as Triton) or any selected version fails
        to load ("load failed for model ...", after loading the others).
        With ``retry_failed=False`` (polling), what failed before and has not changed since
        is not tried again.
        """
        problem = name_problem(name) if isinstance(name, str) else "it is not a string"
        if problem:
            raise InvalidInput(f"model name '{shown(str(name))}' is not valid: {problem}")
        if config_json is not None and not isinstance(config_json, str):
            raise InvalidInput("parameter 'config' must be a string holding the model config as JSON")
        model_dir = self.root / name
        if not model_dir.is_dir() or (config_json is None and not is_model_directory(model_dir)):
            raise NotFound(f"failed to load '{name}', failed to poll from model repository: it has no "
                           f"{name}/config.pbtxt (nor a version directory with model.onnx, model.pt or model.py)")
        entry = self.models.setdefault(name, ModelEntry(name))
        async with entry.lock:
            text = config_json
            try:
                completed = False  # no config.pbtxt: the model's file fills it all, and may have changed
                if text is None:
                    completed = not (model_dir / "config.pbtxt").exists()
                    try:
                        text = "" if completed else (model_dir / "config.pbtxt").read_bytes().decode("utf-8")
                    except UnicodeDecodeError:
                        raise ConfigError(f"{name}/config.pbtxt is not UTF-8 text") from None
                if not retry_failed and entry.failed_config == text and not completed:
                    return False  # this config failed to parse before; it has not changed
                try:
                    # off the event loop: completing a config opens the model (an ONNX session, a
                    # model.py's import), which takes seconds for a large one
                    parse = parse_config_json if config_json is not None else parse_config
                    spec = await asyncio.get_running_loop().run_in_executor(None, parse, text, model_dir, complete)
                    plan = plan_of(spec) if spec.platform == ENSEMBLE else None  # a cycle fails here
                except ConfigError:
                    entry.failed_config = text
                    raise
                entry.failed_config = None
                available = [v for v in (version_directory(p.name) for p in model_dir.iterdir() if p.is_dir())
                             if v is not None]
                wanted = spec.selects_versions(available)
                if not wanted:
                    raise ConfigError(f"no version directory of {name}/ matches its version_policy "
                                      f"(found: {sorted(available) or 'none'}); add e.g. {name}/1/")
                if plan is not None:
                    await self._load_steps(name, plan, retry_failed)
            except (ConfigError, OSError) as exc:
                # Triton answers a failed load with INVALID_ARGUMENT: the model, or the override, is at fault
                entry.reason = self._reason(exc)
                raise InvalidInput(f"failed to load '{name}', failed to poll from model repository: "
                                   f"{entry.reason}") from None
            entry.spec, entry.reason = spec, ""
            return await self._apply(entry, spec, wanted, retry_failed)

    async def _load_steps(self, name: str, plan: Plan, retry_failed: bool) -> None:
        """Load an ensemble's step models that do not serve yet, before the ensemble (as Triton orders them)."""
        chain = _LOADING.get()
        token = _LOADING.set((*chain, name))
        try:
            for step in plan.steps:
                if step.model in (*chain, name):
                    cycle = " -> ".join((*chain[chain.index(step.model):], name, step.model)
                                        if step.model in chain else (name, name))
                    raise ConfigError(f"ensemble '{name}' {step.label}: ensembles include each other ({cycle}); "
                                      "an ensemble cannot be its own step")
                entry = self.models.get(step.model)
                if entry is not None and entry.default is not None:
                    continue
                try:
                    await self.load(step.model, retry_failed=retry_failed)
                except NotFound:
                    raise ConfigError(f"ensemble '{name}' {step.label}: model '{step.model}' is not in the "
                                      f"repository; add {step.model}/config.pbtxt or fix model_name") from None
                except ServingError as exc:
                    raise ConfigError(f"ensemble '{name}' {step.label} did not load: {exc}") from None
        finally:
            _LOADING.reset(token)

    def _unchanged(self, current: ModelVersion | None, spec: ModelSpec, retry_failed: bool) -> bool:
        """Whether a version can stay as it is: it serves (or failed) with this config and these files."""
        if current is None or current.spec.proto != spec.proto or \
                current.fingerprint != fingerprint(self.root / spec.name / str(current.version)):
            return False
        # an ensemble that failed is tried again: what failed may be a step model, fixed since
        return current.state == READY or (current.state == UNAVAILABLE and current.reason != "unloaded"
                                          and not retry_failed and spec.platform != ENSEMBLE)

    async def _apply(self, entry: ModelEntry, spec: ModelSpec, wanted: list[int], retry_failed: bool) -> bool:
        to_start = [v for v in wanted if not self._unchanged(entry.versions.get(v), spec, retry_failed)]
        dropped = [m for v, m in entry.versions.items() if v not in wanted and m.state == READY]
        to_retire: list[ModelVersion] = []
        for version in to_start:
            if entry.versions.get(version) is None or entry.versions[version].state != READY:
                entry.versions[version] = ModelVersion(spec, version)  # LOADING, shown in the index
        results = await asyncio.gather(*(start_version(spec, v, self.root / spec.name / str(v), self.placement,
                                                       self.metrics, self.inprocess) for v in to_start),
                                       return_exceptions=True)
        failures = []
        for version, result in zip(to_start, results, strict=True):
            previous = entry.versions.get(version)
            if isinstance(result, BaseException):
                reason = self._reason(result)
                failures.append(f"version {version} is at UNAVAILABLE state: {reason}")
                log.error("model %s version %d failed to load: %s", spec.name, version, reason,
                          exc_info=None if isinstance(result, ServingError) else result)
                if previous is not None and previous.state == READY:
                    log.warning("model %s version %d keeps serving its previous load", spec.name, version)
                else:
                    where = self.root / spec.name / str(version)
                    entry.versions[version] = ModelVersion(spec, version, state=UNAVAILABLE, reason=reason,
                                                           fingerprint=fingerprint(where))
                continue
            entry.versions[version] = result
            if previous is not None and previous.state == READY:
                to_retire.append(previous)
        # Versions the policy dropped keep serving until every version it selects is ready, as
        # Triton keeps the previous load when a reload fails: a broken new version is no outage.
        if all(v in entry.versions and entry.versions[v].state == READY for v in wanted):
            to_retire += dropped
        elif dropped and failures:
            log.warning("model %s keeps serving version(s) %s until version(s) %s load", spec.name,
                        ", ".join(str(m.version) for m in dropped), ", ".join(str(v) for v in wanted))
        for model in to_retire:
            model.state = UNLOADING  # no longer routed; what it holds drains
        entry.refresh()
        await asyncio.gather(*(retire_version(m, self.metrics) for m in to_retire))
        if failures:
            raise InvalidInput(f"load failed for model '{spec.name}': " + "; ".join(failures))
        return bool(to_start or to_retire)

    async def unload(self, name: str) -> None:
        """Stop routing to every version of a model, drain them, and unload them.

        A model that is not loaded is unloaded already: nothing to do, as Triton answers it.
        """
        entry = self.models.get(name)
        if entry is None:
            return
        async with entry.lock:
            serving = [m for m in entry.versions.values() if m.state == READY]
            for model in serving:
                model.state = UNLOADING
            entry.refresh()
            await asyncio.gather(*(retire_version(m, self.metrics) for m in serving))

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self.models)))

    # -- lookups ---------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            # Triton's text, which clients match; the hint after it
            raise NotFound(f"Request for unknown model: '{name}' is not found; POST /v2/repository/index lists "
                           "the models")
        return entry

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that serves a request: the newest ready one when ``version`` is empty."""
        entry = self.entry(name)
        if not version:
            if entry.default is None:
                reasons = entry.reason or "; ".join(f"version {v.version}: {v.state.lower()} {v.reason}".strip()
                                                    for v in entry.versions.values()) or "not loaded"
                raise Unavailable(f"Request for unknown model: '{name}' has no available versions: {reasons}")
            return entry.default
        number = request_version(version)
        if number is None:
            raise NotFound(f"Request for unknown model: '{name}' version {version[:32]!r} is not found: versions "
                           "are positive integers")
        model = entry.versions.get(number)
        if model is None:
            loaded = ", ".join(str(v) for v in sorted(entry.versions)) or "none"
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found (loaded: {loaded})")
        if model.state != READY:
            raise Unavailable(f"model '{name}' version {version} is not ready: {model.state.lower()} {model.reason}")
        return model

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: one row per model version (or per model without versions)."""
        rows: list[dict[str, Any]] = []
        try:
            scanned, skipped = self._directories()
        except (ConfigError, OSError):
            scanned, skipped = [], {}
        rows += [{"name": name, "state": UNAVAILABLE, "reason": reason} for name, reason in skipped.items()]
        for name in sorted(set(self.models) | set(scanned)):
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                rows.append({"name": name, "state": UNAVAILABLE, "reason": entry.reason if entry else "not loaded"})
                continue
            for version in sorted(entry.versions):
                model = entry.versions[version]
                # a READY version can carry the model's newer trouble: a reload that failed
                rows.append({"name": name, "version": str(version), "state": model.state,
                             "reason": model.reason or entry.reason})
        return [row for row in rows if row["state"] == READY] if ready_only else rows
