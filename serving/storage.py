"""A model repository on object storage (``serve --model-repository s3://bucket/path``), served from a local copy.

The store is listed, and each model's files are fetched into ``--model-cache-dir``: a model
directory is built whole in a new directory beside the others, then a symlink that names the
model is switched to it in one rename, so the repository never sees half a model. The
repository then works on the cache as on any directory::

    <cache>/remote-<hash of the URL>/repository/<model>  ->  .fetched/<id>/   (config.pbtxt, 1/, ...)

Each sync (at start-up, and before each scan with ``--model-control-mode poll``; before each
load request in ``explicit`` mode) fetches only the files whose size or tag (ETag, generation,
modification time) changed; the others are hard-linked from the model's previous copy, so the
versions they belong to keep serving untouched. A model gone from the store leaves the cache,
and the scan unloads it. What was fetched is recorded, so a restart fetches only what changed.

Bounded: every call to the store has a deadline (`serving.storage_fs`), the listing a count, the
repository a total size and the free disk of the cache, checked before anything is fetched; a
key that would land outside the model's directory (``..``, absolute, empty components) keeps
its model from being fetched. A store that cannot be listed at start-up fails the start, with
one line; during polls it is logged once per outage and every model keeps serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from inference_protocol.names import name_problem

from .errors import ConfigError
from .paths import hold_lock
from .repository import Repository
from .storage_cache import Copy, Files, is_whole, link, record, recorded, remove, reusable
from .storage_fs import Remote, Store, StoreError
from .storage_urls import StoreUrl, key_problem

log = logging.getLogger(__name__)

PARALLEL = 4  # files of one model fetched at once


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a remote repository may hold, and how long the store may take to answer."""

    max_bytes: int = 64 * 1024**3
    max_files: int = 10_000
    timeout_s: float = 30.0


class RemoteRepository:
    """The local copy of a remote repository: `start` lays it out, `refresh` brings it up to date.

    Example (`serving.app` does this for an ``s3://``, ``gs://``, ``as://`` or ``az://`` repository)::

        remote = RemoteRepository(parse_store_url("s3://bucket/models"), Path("/cache"), Limits(), {})
        root = await remote.start()       # the local repository, every model fetched
        changed = await remote.refresh()  # before a scan: {"classifier"} when its files changed
    """

    def __init__(self, url: StoreUrl, cache_dir: Path, limits: Limits, environ: Mapping[str, str],
                 store: Store | None = None) -> None:
        self.url = url
        self.limits = limits
        self.environ = environ
        self.base = cache_dir / f"remote-{hashlib.sha256(str(url).encode()).hexdigest()[:12]}"
        self.root = self.base / "repository"
        self.fetched = self.root / ".fetched"  # hidden: the repository's scan skips it
        self.store = store
        self.copies: dict[str, Copy] = {}
        self.problems: dict[str, str] = {}  # model → why its latest files could not be fetched
        self._logged: dict[str, str] = {}  # the problem last logged, by model: logged once, not at every poll
        self._retired: list[Path] = []  # copies replaced or removed, deleted once the scan has moved on
        self._lock = asyncio.Lock()
        self._outage = ""
        self._file_lock: IO[bytes] | None = None

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> Path:
        """Fetch the repository; the local directory to serve. ConfigError when the store cannot be used."""
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise ConfigError(f"--model-cache-dir {self.base.parent} is not usable: {exc.strerror or exc}") from None
        try:
            if self.store is None:
                self.store = await asyncio.to_thread(Store, self.url, self.environ, self.limits.timeout_s)
                await self.store.connect()
            await self.sync()
        except StoreError as exc:
            raise ConfigError(f"--model-repository {exc}") from None
        return self.root

    def _prepare(self) -> None:
        """Lock the cache, keep the copies the last run recorded that are still whole, clear the rest."""
        self.fetched.mkdir(parents=True, exist_ok=True)
        self._file_lock = hold_lock(self.base / "serve.lock",
                                    f"--model-cache-dir {self.base.parent} holds {self.url} for another serve "
                                    "process; give each its own --model-cache-dir")
        self.copies = {name: copy for name, copy in recorded(self.base, str(self.url)).items()
                       if is_whole(self.fetched, copy)}
        for path in self.root.iterdir():
            if path.name != self.fetched.name:
                remove(path)
        kept = {copy.directory for copy in self.copies.values()}
        for path in self.fetched.iterdir():
            if path.name not in kept:
                remove(path)
        for name, copy in self.copies.items():
            link(self.root, self.fetched, name, copy.directory)

    def close(self) -> None:
        if self._file_lock is not None:
            self._file_lock.close()
            self._file_lock = None

    # -- syncing -------------------------------------------------------------------------

    async def sync(self, only: str | None = None) -> set[str]:
        """Bring the copy in line with the store (one model's folder with ``only``); the models that changed.

        StoreError when the store cannot be listed or the repository is over its limits;
        nothing changes then. A model whose files cannot be fetched keeps its previous copy,
        and `reasons` says why.
        """
        assert self.store is not None, "start() first"
        async with self._lock:
            listing = await self.store.listing(self.limits.max_files, only or "")
            if only is None:
                self.problems = {}  # found again by this sync, for every model
            else:
                self.problems.pop(only, None)
            wanted = self._models(listing, only)
            total = sum(size for files in wanted.values() for size, _ in files.values())
            if total > self.limits.max_bytes:
                raise StoreError(f"{self.url} holds {total:,} bytes, more than --model-repository-max-bytes "
                                 f"{self.limits.max_bytes:,}; nothing was fetched")
            changed = [name for name, files in wanted.items()
                       if name not in self.copies or self.copies[name].files != files]
            needed = sum(size for name in changed for key, (size, tag) in wanted[name].items()
                         if reusable(self.fetched, self.copies.get(name), key, size, tag) is None)
            free = (await asyncio.to_thread(shutil.disk_usage, self.fetched)).free
            if needed > free:
                raise StoreError(f"{self.url} needs {needed:,} bytes fetched and {self.base.parent} has {free:,} "
                                 "free; free space or choose another --model-cache-dir; nothing was fetched")
            done = set()
            for name in changed:
                try:
                    await self._fetch(name, wanted[name])
                except (StoreError, OSError) as exc:
                    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    self._problem(name, f"its files cannot be fetched: {what}")
                else:
                    self._logged.pop(name, None)
                    done.add(name)
            gone = [name for name in self.copies if name not in wanted and (only is None or name == only)]
            for name in gone:
                log.info("model %s left %s: removed from the cache", name, self.url)
                await asyncio.to_thread(self._unlink, name)
                done.add(name)
            await asyncio.to_thread(record, self.base, str(self.url), self.copies)
            return done

    def _models(self, listing: list[Remote], only: str | None) -> dict[str, Files]:
        """The listing by model; models with a key that cannot be a path are left out, with their reason."""
        models: dict[str, Files] = {}
        refused: set[str] = set()
        for remote in listing:
            key = remote.key
            name, _, inside = key.partition("/")
            if not inside:
                continue  # a file at the repository's top level is no model's
            if name_problem(name) is not None:
                continue  # the repository skips such directories too
            problem = key_problem(inside)
            if problem:
                self._problem(name, f"key {key[:200]!a} cannot be fetched: {problem}")
                refused.add(name)
                continue
            models.setdefault(name, {})[inside] = (remote.size, remote.tag)
        for name, files in models.items():
            folders = {key[:i] for key in files for i, c in enumerate(key) if c == "/"}
            clash = next((key for key in files if key in folders), None)
            if clash is not None:
                self._problem(name, f"{name}/{clash} is both a file and a folder in the store")
                refused.add(name)
        # a refused model keeps the copy it has, as it is (even when none of its keys could be taken)
        kept = {name: self.copies[name].files for name in refused if name in self.copies}
        return {**{name: files for name, files in models.items() if name not in refused}, **kept}

    async def _fetch(self, name: str, files: Files) -> None:
        """A new copy of one model, built whole, then switched in by renaming its link."""
        assert self.store is not None
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".partial-", dir=self.fetched))
        try:
            reused = 0
            downloads = []
            for key, (size, tag) in sorted(files.items()):
                dest = staging / key
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                source = reusable(self.fetched, self.copies.get(name), key, size, tag)
                if source is not None:
                    await asyncio.to_thread(os.link, source, dest)  # same inode, same mtime: its version is unchanged
                    reused += 1
                else:
                    downloads.append((Remote(key, size, tag), dest))
            await self._download_all(name, downloads)
            directory = staging.name[len(".partial-"):]
            await asyncio.to_thread(staging.rename, self.fetched / directory)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise
        before = self.copies.get(name)
        await asyncio.to_thread(link, self.root, self.fetched, name, directory)
        self.copies[name] = Copy(directory, dict(files))
        if before is not None:
            self._retired.append(self.fetched / before.directory)
        log.info("model %s: fetched %d file(s) from %s, %d unchanged", name, len(downloads), self.url, reused)

    async def _download_all(self, name: str, downloads: list[tuple[Remote, Path]]) -> None:
        """A few files at once; the first failure cancels the others (the copy is thrown away anyway)."""
        store = self.store
        assert store is not None
        gate = asyncio.Semaphore(PARALLEL)

        async def download(remote: Remote, dest: Path) -> None:
            async with gate:
                await store.download(dataclasses.replace(remote, key=f"{name}/{remote.key}"), dest)

        tasks = [asyncio.ensure_future(download(remote, dest)) for remote, dest in downloads]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _unlink(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        copy = self.copies.pop(name)
        self._retired.append(self.fetched / copy.directory)
        self.problems.pop(name, None)

    def _problem(self, name: str, problem: str) -> None:
        kept = "the copy fetched before keeps serving" if name in self.copies else "it is not served"
        reason = f"model {name} in {self.url}: {problem}; {kept}"
        if self._logged.get(name) != reason:
            log.error("%s", reason)
        self._logged[name] = self.problems[name] = reason

    # -- model control (serving.control.Sources) -----------------------------------------

    async def refresh(self) -> set[str]:
        """Before a scan: sync, the models whose files changed; a failing store is logged, nothing changes."""
        try:
            changed = await self.sync()
        except StoreError as exc:
            if self._outage != str(exc):
                log.warning("%s; every model keeps serving what it has (tried again at each poll)", exc)
            self._outage = str(exc)
            return set()
        if self._outage:
            log.info("%s answers again", self.url)
        self._outage = ""
        return changed

    async def fetch_model(self, name: str) -> None:
        """Before an explicit load: that model's folder synced (StoreError when the store fails)."""
        if name_problem(name) is None:
            await self.sync(only=name)

    async def settle(self, repository: Repository) -> None:
        """After a scan: the copies it replaced or removed are deleted (their models have moved on)."""
        retired, self._retired = self._retired, []
        for path in retired:
            await asyncio.to_thread(shutil.rmtree, path, True)

    def reasons(self) -> Mapping[str, str]:
        """Why a model does not serve what the store holds, by model."""
        return dict(self.problems)
