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
import os
import stat
import weakref
from pathlib import Path

import torch

from .backends import handler_class
from .batching import Batcher
from .config import ENSEMBLE, ModelSpec
from .device import Placement
from .ensemble import ensemble_scheduler
from .errors import ConfigError
from .inprocess import InProcess
from .instance import ModelInstance
from .metrics import Metrics, ModelStats
from .model import Model, forget_handler_module
from .paths import confined
from .scheduling import Scheduler
from .warmup import warmup_batches

log = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
REFREEZE_DELAY_SECS = 1.0

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
    batcher: Scheduler | None = None  # a Batcher; an ensemble's EnsembleScheduler
    stats: ModelStats | None = None


def fingerprint(path: Path) -> Fingerprint:
    """Every file under a version directory with its size and modification time.

    Symlinks count as themselves (lstat) and linked directories are not entered: a link
    out of the directory, or a loop, cannot make a scan slow or fail.
    """
    if not path.is_dir():
        return ()
    files = []
    for directory, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            full = os.path.join(directory, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue  # removed while scanning: the next scan sees the change
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                files.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(files))


def model_file(spec: ModelSpec, version: int, path: Path) -> Path:
    """The version's model file (``default_model_filename``), resolved inside its version directory."""
    label = f"{spec.name}/{version}"
    confined(path.parent, str(version), "the version directory", label)
    return confined(path, spec.filename, "default_model_filename", f"{label}/{spec.filename}")


def _create_handlers(spec: ModelSpec, version: int, path: Path, devices: list[torch.device],
                     models: InProcess | None) -> list[Model]:
    file = model_file(spec, version, path)
    cls = handler_class(spec, version, file)
    handlers: list[Model] = []
    try:
        for device in devices:
            handler = cls(name=spec.name, version=version, config=spec, path=path, device=device)
            handler.models = models  # before load: a handler may look at its neighbours there
            handler.load()
            handlers.append(handler)
    except BaseException:
        for handler in handlers:
            handler.unload()
        raise
    return handlers


def _warm_up(instance: ModelInstance, batches: list[dict], explicit: bool) -> None:
    try:
        instance.warm_up(batches)
    except Exception as exc:
        if explicit:
            raise ConfigError(f"model_warmup failed on {instance.label}: {exc}") from exc
        log.warning("warm-up of %s failed (%s); it serves anyway, its first requests may be slow. "
                    "Set parameter warmup to false, or give model_warmup samples it accepts", instance.label, exc)


async def start_version(spec: ModelSpec, version: int, path: Path, placement: Placement,
                        metrics: Metrics, models: InProcess | None = None) -> ModelVersion:
    """Load a version and warm it up on worker threads, then start its batcher; raises when loading fails.

    ``models`` is handed to every handler (``handler.models``), so it can call the server's
    other models; their blocking calls run on this loop.
    """
    model = ModelVersion(spec, version, fingerprint=fingerprint(path))
    loop = asyncio.get_running_loop()
    if models is not None:
        models.attach(loop)
    if spec.platform == ENSEMBLE:
        return _start_ensemble(model, metrics, models)
    devices = placement.devices(spec)
    handlers = await loop.run_in_executor(None, _create_handlers, spec, version, path, devices, models)
    stats = metrics.add_model(spec, version)
    instances: list[ModelInstance] = []
    try:
        instances += (ModelInstance(h, spec, stats, i) for i, h in enumerate(handlers))
        batches, explicit = warmup_batches(spec, path.parent)
        if batches:
            await asyncio.gather(*(loop.run_in_executor(i.thread, _warm_up, i, batches, explicit)
                                   for i in instances if not i.is_async))
    except BaseException:
        metrics.remove_model(stats)
        for instance in instances:
            instance.thread.shutdown(wait=False)
        for handler in handlers:
            handler.unload()
        raise
    model.stats, model.instances = stats, instances
    model.batcher = batcher = Batcher(spec.batching, instances, name=spec.name, groups=[str(d) for d in devices],
                                      depths=[i.depth for i in instances])
    stats.pending = lambda: batcher.pending
    batcher.start()
    model.state = READY
    places = ", ".join(sorted({str(d) for d in devices}))
    log.info("model %s version %d is ready (%s, %d instance(s) on %s, max_batch_size %d%s)", spec.name, version,
             spec.platform, len(handlers), places, spec.max_batch_size,
             f", warmed up with {len(batches)} batch(es)" if batches else "")
    return model


def _start_ensemble(model: ModelVersion, metrics: Metrics, models: InProcess | None) -> ModelVersion:
    """An ensemble has no handlers: its scheduler sends each step to its model (loaded before it)."""
    if models is None:
        raise ConfigError(f"ensemble '{model.spec.name}' needs the server's other models to run its steps")
    stats = metrics.add_model(model.spec, model.version)
    try:
        scheduler = ensemble_scheduler(model.spec, models, stats)
    except BaseException:
        metrics.remove_model(stats)
        raise
    model.batcher, model.stats, model.state = scheduler, stats, READY
    log.info("model %s version %d is ready (ensemble of %s, max_batch_size %d)", model.spec.name, model.version,
             ", ".join(scheduler.plan.models), model.spec.max_batch_size)
    return model


async def _unload_instances(model: ModelVersion) -> None:
    loop = asyncio.get_running_loop()
    for instance in model.instances:
        try:
            await loop.run_in_executor(None, instance.unload)
        except Exception:  # a failing unload must not stop the others
            log.exception("model %s version %d: unload failed", model.spec.name, model.version)


class _Retiring:
    """The versions retiring on one event loop at the same time, and the one collection they share.

    A full collection walks the whole heap (all of it once thawed): a stop that retires
    ten versions would walk it ten times, seconds in a large process. The last of them
    to let go collects for all, and each returns once that collection ran.
    """

    def __init__(self) -> None:
        self.versions: list[ModelVersion] = []  # every version of this collection
        self.letting_go = 0  # how many of them are still draining and unloading
        self.collected = asyncio.Event()


# The collector is the process's, as gc.freeze is; what waits on it is kept per event loop
# (each server runs on one) and goes with its loop.
_retiring: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Retiring] = weakref.WeakKeyDictionary()


def _join(loop: asyncio.AbstractEventLoop, model: ModelVersion) -> _Retiring:
    retiring = _retiring.get(loop)
    if retiring is None:
        retiring = _retiring[loop] = _Retiring()
    retiring.versions.append(model)
    retiring.letting_go += 1
    return retiring


def _leave(loop: asyncio.AbstractEventLoop, retiring: _Retiring) -> None:
    retiring.letting_go -= 1
    if retiring.letting_go:
        return
    del _retiring[loop]  # who retires from now on waits for a collection of its own
    try:
        # a version made since the last freeze is in the collector's sight already
        _collect(loop, thaw=_any_frozen(retiring.versions))
    finally:
        retiring.collected.set()


def _any_frozen(objects: list[ModelVersion]) -> bool:
    """Whether gc.freeze moved any of ``objects`` out of the collector's sight: frozen objects are in no generation.

    A version's own object is made before everything it holds, so it is frozen when any of that is.
    """
    if gc.get_freeze_count() == 0:
        return False
    unseen = {id(o) for o in objects if gc.is_tracked(o)}
    if not unseen:
        return False
    for tracked in gc.get_objects():
        unseen.discard(id(tracked))
        if not unseen:
            return False
    return True


def _collect(loop: asyncio.AbstractEventLoop, thaw: bool) -> None:
    """Collect what retired versions held, even what start-up froze out of the collector's sight.

    serving.app freezes what start-up made, a version too when it loaded then, and frozen
    objects are never collected: thaw them, but only then, since a collection after a thaw
    walks the whole heap and one without walks only what was made since the freeze. Some of
    what a version held lets go a moment later (its batcher task's callbacks, its instance
    threads exiting), so the survivors are frozen again only after a second collection, a second on.
    """
    if thaw:
        gc.unfreeze()
        loop.call_later(REFREEZE_DELAY_SECS, _refreeze)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _refreeze() -> None:
    gc.collect()
    gc.freeze()


async def retire_version(model: ModelVersion, metrics: Metrics) -> None:
    """Drain a version that no longer receives requests, then unload it and free its memory.

    Versions retiring at the same time (a stop, a reload of several versions) share one
    collection: each returns once the last of them has let go and the memory is freed.
    """
    model.state = UNLOADING
    loop = asyncio.get_running_loop()
    retiring = _join(loop, model)
    try:
        if model.batcher is not None:
            await model.batcher.drain()
            await model.batcher.stop()
        await _unload_instances(model)  # in a frame of its own, which lets go of them when it returns
        if model.stats is not None:
            metrics.remove_model(model.stats)
        forget_handler_module(model.spec.name, model.version)
        model.instances, model.batcher, model.stats = [], None, None
        model.state, model.reason = UNAVAILABLE, "unloaded"
    finally:
        _leave(loop, retiring)
    await retiring.collected.wait()
    log.info("model %s version %d is unloaded", model.spec.name, model.version)
