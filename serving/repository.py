"""The model repository: Triton's layout, scanned, loaded and tracked per version.

```
<repo>/<model>/config.pbtxt          Triton ModelConfig, protobuf text format
<repo>/<model>/<version>/model.pt    platform "pytorch_libtorch": TorchScript
<repo>/<model>/<version>/model.py    backend "python": a serving.Model subclass
```

A broken model directory (bad config, missing file, an exception in ``load``) is
logged, shown with its reason in the repository index, and leaves the other models
serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from pathlib import Path
from typing import Any

import torch

from .batching import Batcher
from .config import PYTHON, ModelSpec, parse_config
from .errors import ConfigError, NotFound, ServingError, Unavailable
from .instance import ModelInstance
from .metrics import Metrics, ModelStats
from .model import Model, forget_handler_module, load_handler_class
from .torchscript import TorchScriptModel

log = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


@dataclasses.dataclass
class ModelVersion:
    """One version of a model, loaded and serving (or the reason it is not)."""

    spec: ModelSpec
    version: int
    state: str = LOADING
    reason: str = ""
    instances: list[ModelInstance] = dataclasses.field(default_factory=list)
    batcher: Batcher | None = None
    stats: ModelStats | None = None


@dataclasses.dataclass
class ModelEntry:
    """A model directory: its parsed config (when it parses) and its versions."""

    name: str
    spec: ModelSpec | None = None
    versions: dict[int, ModelVersion] = dataclasses.field(default_factory=dict)
    reason: str = ""

    default: ModelVersion | None = None  # the newest ready version: where unversioned requests go

    def set_state(self, model: ModelVersion, state: str, reason: str = "") -> None:
        model.state, model.reason = state, reason
        ready = [v for v in self.versions.values() if v.state == READY]
        self.default = max(ready, key=lambda v: v.version) if ready else None


class Repository:
    def __init__(self, root: Path, device: torch.device, metrics: Metrics) -> None:
        self.root = root
        self.device = device
        self.metrics = metrics
        self.models: dict[str, ModelEntry] = {}

    def scan(self) -> list[str]:
        """Names of the model directories (those holding a config.pbtxt)."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        names = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                if (path / "config.pbtxt").is_file():
                    names.append(path.name)
                else:
                    log.warning("skipping %s: it has no config.pbtxt", path)
        return names

    async def load_all(self) -> None:
        for name in self.scan():
            await self.load(name)

    async def load(self, name: str) -> ModelEntry:
        """Load a model's versions as its version policy selects; failures are recorded, not raised."""
        entry = self.models.setdefault(name, ModelEntry(name))
        model_dir = self.root / name
        try:
            spec = parse_config((model_dir / "config.pbtxt").read_text(), model_dir)
            available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
            wanted = spec.selects_versions(available)
            if not wanted:
                raise ConfigError(f"no version directory of {model_dir} matches its version_policy "
                                  f"(found: {sorted(available) or 'none'}); add e.g. {model_dir}/1/")
        except (ConfigError, OSError) as exc:
            entry.reason = str(exc)
            log.error("model %s is unavailable: %s", name, exc)
            return entry
        entry.spec, entry.reason = spec, ""
        for version in wanted:
            entry.versions[version] = ModelVersion(spec, version)
        await asyncio.gather(*(self._load_version(entry, entry.versions[v], model_dir / str(v)) for v in wanted))
        return entry

    async def _load_version(self, entry: ModelEntry, model: ModelVersion, path: Path) -> None:
        spec = model.spec
        loop = asyncio.get_running_loop()
        stats = self.metrics.add_model(spec, model.version)
        try:
            handlers = await loop.run_in_executor(None, self._create_handlers, spec, model.version, path)
        except Exception as exc:  # noqa: BLE001 - any failure marks only this version
            self.metrics.remove_model(stats)
            entry.set_state(model, UNAVAILABLE, str(exc) if isinstance(exc, ServingError)
                            else f"load failed: {type(exc).__name__}: {exc}")
            log.error("model %s version %d failed to load: %s", spec.name, model.version, model.reason,
                      exc_info=None if isinstance(exc, ServingError) else exc)
            return
        model.instances = [ModelInstance(h, spec, stats, i) for i, h in enumerate(handlers)]
        model.stats = stats
        model.batcher = Batcher(spec.batching, model.instances, name=spec.name)
        stats.pending = lambda: model.batcher.pending if model.batcher else 0
        model.batcher.start()
        entry.set_state(model, READY)
        log.info("model %s version %d is ready (%s, %d instance(s) on %s, max_batch_size %d)", spec.name,
                 model.version, spec.platform, len(handlers), self.device, spec.max_batch_size)

    def _create_handlers(self, spec: ModelSpec, version: int, path: Path) -> list[Model]:
        cls: type[Model] = (load_handler_class(path / spec.filename, spec.name, version)
                            if spec.platform == PYTHON else TorchScriptModel)
        handlers: list[Model] = []
        try:
            for _ in range(spec.instance_count):
                handler = cls(name=spec.name, version=version, config=spec, path=path, device=self.device)
                handler.load()
                handlers.append(handler)
        except BaseException:
            for handler in handlers:
                handler.unload()
            raise
        return handlers

    async def unload(self, name: str) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model '{name}' is not in the repository")
        await asyncio.gather(*(self._unload_version(entry, v) for v in entry.versions.values()))

    async def _unload_version(self, entry: ModelEntry, model: ModelVersion) -> None:
        if model.state != READY:
            return
        entry.set_state(model, UNLOADING)
        if model.batcher is not None:
            await model.batcher.stop()
        loop = asyncio.get_running_loop()
        for instance in model.instances:
            await loop.run_in_executor(None, instance.unload)
        if model.stats is not None:
            self.metrics.remove_model(model.stats)
        forget_handler_module(model.spec.name, model.version)
        model.instances, model.batcher, model.stats = [], None, None
        entry.set_state(model, UNAVAILABLE, "unloaded")
        gc.collect()

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self.models)))

    # -- lookups ---------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'; GET /v2/repository/index (or the server log) lists the models")
        return entry

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that serves a request: the newest ready one when ``version`` is empty."""
        entry = self.entry(name)
        if not version:
            model = entry.default
            if model is None:
                reasons = entry.reason or "; ".join(f"version {v.version}: {v.state.lower()} {v.reason}".strip()
                                                    for v in entry.versions.values()) or "not loaded"
                raise Unavailable(f"model '{name}' is not ready: {reasons}")
            return model
        if not version.isdigit():
            raise NotFound(f"model '{name}' has no version '{version}': versions are positive integers")
        model = entry.versions.get(int(version))
        if model is None:
            loaded = ", ".join(str(v) for v in sorted(entry.versions)) or "none"
            raise NotFound(f"model '{name}' has no loaded version {version} (loaded: {loaded})")
        if model.state != READY:
            raise Unavailable(f"model '{name}' version {version} is not ready: {model.state.lower()} {model.reason}")
        return model

    def all_ready(self) -> bool:
        return all(entry.default is not None and not entry.reason
                   and all(v.state == READY for v in entry.versions.values())
                   for entry in self.models.values())

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: one row per model version (or per model that never parsed)."""
        rows: list[dict[str, Any]] = []
        for name in sorted(set(self.models) | set(self._names_on_disk())):
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                rows.append({"name": name, "state": UNAVAILABLE,
                             "reason": entry.reason if entry else "not loaded"})
                continue
            for version in sorted(entry.versions):
                model = entry.versions[version]
                rows.append({"name": name, "version": str(version), "state": model.state, "reason": model.reason})
        return rows

    def _names_on_disk(self) -> list[str]:
        try:
            return [p.name for p in self.root.iterdir() if (p / "config.pbtxt").is_file()]
        except OSError:
            return []
