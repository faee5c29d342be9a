"""One model version's life: start it (handlers, instances, batcher, metrics), then retire it.

Retiring drains first: the repository stops routing requests to a version before it
retires it, so the requests already queued or computing finish; then the handlers
unload and the memory is returned (the CUDA cache too, on a GPU).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from pathlib import Path

import torch

from .batching import Batcher
from .config import PYTHON, ModelSpec
from .instance import ModelInstance
from .metrics import Metrics, ModelStats
from .model import Model, forget_handler_module, load_handler_class
from .torchscript import TorchScriptModel

log = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclasses.dataclass
class ModelVersion:
    """One version of a model, loaded and serving (or the reason it is not)."""

    spec: ModelSpec
    version: int
    state: str = LOADING
    reason: str = ""
    fingerprint: Fingerprint = ()
    instances: list[ModelInstance] = dataclasses.field(default_factory=list)
    batcher: Batcher | None = None
    stats: ModelStats | None = None


def fingerprint(path: Path) -> Fingerprint:
    """Every file under a version directory with its size and modification time."""
    if not path.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in path.rglob("*") if p.is_file()))


def _create_handlers(spec: ModelSpec, version: int, path: Path, device: torch.device) -> list[Model]:
    cls: type[Model] = (load_handler_class(path / spec.filename, spec.name, version)
                        if spec.platform == PYTHON else TorchScriptModel)
    handlers: list[Model] = []
    try:
        for _ in range(spec.instance_count):
            handler = cls(name=spec.name, version=version, config=spec, path=path, device=device)
            handler.load()
            handlers.append(handler)
    except BaseException:
        for handler in handlers:
            handler.unload()
        raise
    return handlers


async def start_version(spec: ModelSpec, version: int, path: Path, device: torch.device,
                        metrics: Metrics) -> ModelVersion:
    """Load a version on a worker thread and start its batcher; raises when loading fails."""
    model = ModelVersion(spec, version, fingerprint=fingerprint(path))
    loop = asyncio.get_running_loop()
    handlers = await loop.run_in_executor(None, _create_handlers, spec, version, path, device)
    model.stats = metrics.add_model(spec, version)
    model.instances = [ModelInstance(h, spec, model.stats, i) for i, h in enumerate(handlers)]
    model.batcher = Batcher(spec.batching, model.instances, name=spec.name)
    batcher = model.batcher
    model.stats.pending = lambda: batcher.pending
    batcher.start()
    model.state = READY
    log.info("model %s version %d is ready (%s, %d instance(s) on %s, max_batch_size %d)", spec.name, version,
             spec.platform, len(handlers), device, spec.max_batch_size)
    return model


async def retire_version(model: ModelVersion, metrics: Metrics) -> None:
    """Drain a version that no longer receives requests, then unload it and free its memory."""
    model.state = UNLOADING
    loop = asyncio.get_running_loop()
    if model.batcher is not None:
        await model.batcher.drain()
        await model.batcher.stop()
    for instance in model.instances:
        try:
            await loop.run_in_executor(None, instance.unload)
        except Exception:  # noqa: BLE001 - a failing unload must not stop the others
            log.exception("model %s version %d: unload failed", model.spec.name, model.version)
    if model.stats is not None:
        metrics.remove_model(model.stats)
    forget_handler_module(model.spec.name, model.version)
    model.instances, model.batcher, model.stats = [], None, None
    model.state, model.reason = UNAVAILABLE, "unloaded"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.info("model %s version %d is unloaded", model.spec.name, model.version)
