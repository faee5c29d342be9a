"""Models straight from the registry (``serve --model-source models:/NAME@ALIAS``).

At start-up every source is resolved, its version fetched into ``--model-cache-dir`` with
every digest verified, and installed as a Triton model directory under
``<cache>/repository``, which the server then serves as its model repository: the served
version number is the registry version number. Anything that cannot be resolved or
verified fails the start, with one line naming the source (and the file): there would be
nothing to serve.

With ``--model-control-mode poll``, each poll first re-resolves the alias sources (a
``models:/NAME/VERSION`` never moves). A new version is fetched, verified and installed
beside the one serving, with only the new one selected, so that the repository's reload
takes over without dropping a request: the new version loads, takes over once ready, and
the old one drains. A version that fails verification or loading leaves the previous one
serving, the index says why, and it is tried again when the alias moves to it again, or
after a back-off (a minute, doubling up to an hour): a tampered artifact store would
otherwise be downloaded in full on every poll, and a download cut short still heals by
itself. A registry that is down is logged once per outage; everything keeps serving.

Registry calls (MLflow is synchronous) and the hashing of the files run in a thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from model_registry.errors import NotFound, RegistryError, Unreachable, VerificationFailed
from model_registry.pull import fetch, install
from model_registry.store import Registry, Version
from model_registry.uris import ModelUri, parse_model_uri

from .errors import ConfigError
from .lifecycle import READY, UNAVAILABLE
from .metrics import Metrics
from .paths import hold_lock
from .repository import Repository

log = logging.getLogger(__name__)

RETRY_FIRST_SECS = 60.0
RETRY_MAX_SECS = 3600.0
_FETCHED = re.compile(r"\d+-[0-9a-f]+")  # a version fetched into the cache: <version>-<digest[:12]>


@dataclasses.dataclass
class Source:
    """One ``--model-source`` and what it serves."""

    uri: ModelUri
    served: tuple[Version, Path] | None = None  # the version that serves, and its verified copy
    candidate: tuple[Version, Path] | None = None  # installed by this poll, not yet loaded
    failed: int | None = None  # the version that failed (verification or loading), not tried again until
    retry_at: float = 0.0  # ... this monotonic time (or the alias moves)
    outcome: str = ""  # how it failed: verification_failed or load_failed
    backoff: float = RETRY_FIRST_SECS
    reason: str = ""  # why the model does not serve what the source names; "" when it does
    trouble: str = ""  # the last message logged for a registry error, so that it is logged once

    @property
    def name(self) -> str:
        return self.uri.name

    def keeps_serving(self) -> str:
        return f"version {self.served[0].version} keeps serving" if self.served else "nothing serves"


class ModelSources:
    """The registry sources of a server: laid out at `start`, followed by `refresh` before each poll.

    Example (`serving.app` does this when ``--model-source`` is given)::

        sources = ModelSources(["models:/classifier@champion"], None, Path("/cache"), metrics)
        root = await sources.start()        # <cache>/repository, verified, ready to load
        moved = await sources.refresh()     # before each poll's scan: {"classifier"} after an alias move
    """

    def __init__(self, uris: Sequence[str], registry_uri: str | None, cache_dir: Path, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parsed = []
        for uri in uris:
            try:
                parsed.append(parse_model_uri(uri))
            except RegistryError as exc:
                raise ConfigError(f"--model-source {uri!r}: {exc}") from None
        names = [uri.name for uri in parsed]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(f"--model-source names model {', '.join(twice)} more than once: give one source "
                              "per model (a model serves one version at a time from its source)")
        self.sources = [Source(uri) for uri in parsed]
        self.registry_uri = registry_uri
        self.cache_dir = cache_dir
        self.root = cache_dir / "repository"  # what the server serves, laid out by `install`
        self.fetched = cache_dir / "versions"  # the verified copies, by `fetch`
        self.metrics = metrics
        self.clock = clock
        self.registry: Registry | None = None
        self._outage = False
        self._lock: IO[bytes] | None = None

    # -- start-up --------------------------------------------------------------------------

    async def start(self) -> Path:
        """Resolve, fetch, verify and install every source; the repository to serve. ConfigError on failure."""
        try:
            await asyncio.to_thread(self._lock_cache)
            await asyncio.to_thread(self._clear_repository)
        except OSError as exc:
            raise ConfigError(f"--model-cache-dir {self.cache_dir} is not usable: {exc.strerror or exc}") from None
        try:
            self.registry = await asyncio.to_thread(Registry.open, self.registry_uri, announce=log.info)
        except RegistryError as exc:
            raise ConfigError(f"--model-source: cannot open the registry: {exc}") from None
        for source in self.sources:
            try:
                version = await asyncio.to_thread(self.registry.resolve, source.uri)
                path = await asyncio.to_thread(fetch, self.registry, version, self.fetched)
                await asyncio.to_thread(install, self.root, source.name, [(version, path)], [version.version])
            except VerificationFailed as exc:
                raise ConfigError(f"--model-source {source.uri} failed verification: {exc}; nothing to serve "
                                  "until the artifacts match their manifest") from None
            except RegistryError as exc:
                raise ConfigError(f"--model-source {source.uri}: {exc}") from None
            except OSError as exc:  # the cache: full, or not writable
                raise ConfigError(f"--model-source {source.uri}: cannot keep it in --model-cache-dir "
                                  f"{self.cache_dir}: {exc.strerror or exc}") from None
            source.candidate = (version, path)
            log.info("model %s: %s is version %d (manifest %s)", source.name, source.uri, version.version,
                     version.manifest_digest[:12])
        return self.root

    def _lock_cache(self) -> None:
        # One serve process per cache: each lays out (and clears) <cache>/repository as its own.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(self.cache_dir / "serve.lock", f"--model-cache-dir {self.cache_dir} is in use by "
                               "another serve process; give each its own --model-cache-dir")

    def _clear_repository(self) -> None:
        # What an earlier run laid out (other models, a half-built directory) must not be served now.
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # -- following the aliases -------------------------------------------------------------

    async def refresh(self) -> set[str]:
        """Re-resolve the alias sources and install the versions they moved to; the models to (re)load."""
        moved: set[str] = set()
        registry = self.registry
        following = [source for source in self.sources if source.uri.moves]
        if registry is None:
            return moved
        for index, source in enumerate(following):
            try:
                if await self._check(registry, source):
                    moved.add(source.name)
            except Unreachable as exc:
                for skipped in following[index:]:  # one bounded wait per poll, not one per source
                    self._count(skipped, "unreachable")
                if not self._outage:
                    log.warning("the registry is unreachable: %s; every model keeps serving its version (checked "
                                "again at each poll)", exc)
                self._outage = True
                break
            except Exception as exc:  # a source's trouble leaves the other sources, and the models, as they are
                self._count(source, "not_found" if isinstance(exc, NotFound) else "error")
                source.reason = f"{source.uri} cannot be followed: {exc}; {source.keeps_serving()}"
                if source.trouble != source.reason:
                    log.error("model %s: %s", source.name, source.reason,
                              exc_info=None if isinstance(exc, RegistryError) else exc)
                source.trouble = source.reason
            else:
                if self._outage:
                    log.info("the registry answers again")
                self._outage = False
        return moved

    async def _check(self, registry: Registry, source: Source) -> bool:
        """One alias source: True when a new version was installed for this poll to load."""
        version = await asyncio.to_thread(registry.resolve, source.uri)
        source.trouble = ""
        if source.served is not None and version.version == source.served[0].version:
            source.failed, source.reason, source.backoff = None, "", RETRY_FIRST_SECS
            self._count(source, "unchanged")
            return False
        if version.version == source.failed:
            if self.clock() < source.retry_at:
                self._count(source, source.outcome)  # still failing: the rate of the failure stays visible
                return False
        else:
            source.backoff = RETRY_FIRST_SECS  # a version not tried yet: at once, with a fresh back-off
        log.info("model %s: %s moved to version %d", source.name, source.uri, version.version)
        try:
            path = await asyncio.to_thread(fetch, registry, version, self.fetched)
        except VerificationFailed as exc:
            self._failed(source, version.version, "verification_failed", f"failed verification: {exc}")
            return False
        # The version serving stays on disk beside the new one, but only the new one is selected:
        # the repository loads it beside the old, which drains once the new one is ready.
        kept = [source.served] if source.served is not None else []
        await asyncio.to_thread(install, self.root, source.name, [*kept, (version, path)], [version.version])
        source.candidate = (version, path)
        return True

    def _failed(self, source: Source, version: int, outcome: str, what: str) -> None:
        source.failed, source.outcome = version, outcome
        source.retry_at = self.clock() + source.backoff
        source.backoff = min(source.backoff * 2, RETRY_MAX_SECS)
        verb = "moved to" if source.served is not None else "is at"
        source.reason = f"{source.uri} {verb} version {version}, which {what}; {source.keeps_serving()}"
        log.error("model %s: %s (tried again when the alias moves, or in %.0fs)", source.name, source.reason,
                  source.retry_at - self.clock())
        self._count(source, outcome)

    async def settle(self, repository: Repository) -> None:
        """After a scan: a candidate that loaded serves now; one that failed leaves the previous one serving."""
        for source in self.sources:
            if source.candidate is None:
                continue
            version, path = source.candidate
            entry = repository.models.get(source.name)
            loaded = entry.versions.get(version.version) if entry is not None else None
            if loaded is None or loaded.state not in (READY, UNAVAILABLE):
                continue  # not tried (yet): e.g. not named by --load-model in explicit mode
            source.candidate = None
            if loaded.state != READY:
                self._failed(source, version.version, "load_failed", f"failed to load: {loaded.reason}")
                continue
            before = source.served
            source.served, source.failed, source.reason = (version, path), None, ""
            source.backoff = RETRY_FIRST_SECS
            self.metrics.source_version.labels(source.name, str(source.uri)).set(version.version)
            if before is not None:
                self._count(source, "updated")
                log.info("model %s: version %d of %s serves", source.name, version.version, source.uri)
                if before[1] != path:
                    await asyncio.to_thread(self._prune, source.name, {path, before[1]})

    def _prune(self, name: str, keep: set[Path]) -> None:
        # The cache keeps the version serving and the one before it (a quick move back); older
        # copies would fill the disk over a long life of alias moves.
        try:
            for path in (self.fetched / name).iterdir():
                if path.is_dir() and _FETCHED.fullmatch(path.name) and path not in keep:
                    shutil.rmtree(path, ignore_errors=True)
        except OSError as exc:
            log.warning("cannot prune the cache of model %s: %s", name, exc)

    def reasons(self) -> Mapping[str, str]:
        """Why a model does not serve what its source names now, by model."""
        return {source.name: source.reason for source in self.sources if source.reason}

    def _count(self, source: Source, outcome: str) -> None:
        self.metrics.source_checks.labels(source.name, str(source.uri), outcome).inc()
