"""Model control, with Triton's modes.

* ``none``: every model in the repository loads at start-up; the load and unload
  requests are refused.
* ``explicit``: only ``--load-model`` names load at start-up (``*`` for all); clients
  load and unload through the repository API.
* ``poll``: every model loads at start-up, and the repository is re-scanned every
  ``--repository-poll-secs``: new models load, removed ones unload, and changed configs or
  version directories reload; the load and unload requests are refused.

With ``--model-source``, the repository is laid out from the registry (`serving.sources`),
and each poll first follows the sources' aliases: a source that moved installs its new
version, which this scan then loads as it would any changed model. A repository on object
storage (`serving.storage`) is such a source too: each poll first fetches what changed in the
store into the local copy, and in ``explicit`` mode each load request first fetches its model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from .errors import ServingError, Unsupported
from .repository import Repository

log = logging.getLogger(__name__)

MODES = ("none", "explicit", "poll")


class Sources(Protocol):
    """What model control asks of the registry sources (`serving.sources.ModelSources`)."""

    async def refresh(self) -> set[str]:
        """Follow the aliases before a scan; the models that got a new version to try."""

    async def settle(self, repository: Repository) -> None:
        """After a scan: note which new versions loaded and which failed."""

    def reasons(self) -> Mapping[str, str]:
        """Why a model does not serve what its source names, by model, for the index."""


@runtime_checkable
class Fetching(Protocol):
    """Sources that copy models from elsewhere (`serving.storage.RemoteRepository`): a load fetches first."""

    async def fetch_model(self, name: str) -> None:
        """Bring the model's local copy in line with its source before it is loaded."""


class ModelControl:
    def __init__(self, repository: Repository, mode: str = "none", load_models: tuple[str, ...] = (),
                 poll_secs: float = 15.0, sources: Sources | None = None) -> None:
        self.repository = repository
        self.sources = sources
        self.mode = mode
        self.load_models = load_models
        self.poll_secs = poll_secs
        self.required: set[str] = set()  # models whose start-up load readiness waits for
        self._poller: asyncio.Task[None] | None = None
        self._last_error: dict[str, str] = {}

    async def start(self) -> None:
        """Load what the mode selects; failures are logged and kept in the index, not raised."""
        on_disk = self.repository.scan()
        if self.mode == "explicit" and "*" not in self.load_models:
            names = list(dict.fromkeys(self.load_models))
        else:
            names = on_disk
        self.required = set(names)
        for name in names:
            await self._load_logged(name)
        if self.sources is not None:
            await self.sources.settle(self.repository)
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository-poll")

    def startup_ready(self) -> bool:
        """Every model the start-up selected has a ready version."""
        return all(name in self.repository.models and self.repository.models[name].default is not None
                   for name in self.required)

    def _check_api(self, action: str) -> None:
        if self.mode != "explicit":
            raise Unsupported(f"explicit model {action} is not allowed when --model-control-mode is "
                              f"{self.mode}; start serve with --model-control-mode explicit")

    async def load(self, name: str, config_json: str | None = None) -> None:
        self._check_api("load")
        if isinstance(self.sources, Fetching):
            await self.sources.fetch_model(name)
        try:
            await self.repository.load(name, config_json)
        finally:
            if self.sources is not None:
                await self.sources.settle(self.repository)

    async def unload(self, name: str) -> None:
        self._check_api("unload")
        await self.repository.unload(name)
        self.required.discard(name)  # readiness no longer waits for it

    async def _load_logged(self, name: str, retry_failed: bool = True) -> None:
        try:
            await self.repository.load(name, retry_failed=retry_failed)
        except ServingError as exc:
            if self._last_error.get(name) != str(exc):
                log.error("%s", exc)
            self._last_error[name] = str(exc)
        else:
            self._last_error.pop(name, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.poll_once()
            except Exception:  # polling must go on
                log.exception("polling the model repository failed; trying again in %gs", self.poll_secs)

    async def poll_once(self) -> None:
        """Bring the loaded models in line with the repository on disk (and the disk with the registry)."""
        moved = await self.sources.refresh() if self.sources is not None else set()
        on_disk = set(self.repository.scan())
        for name in sorted(set(self.repository.models) - on_disk):
            if self.repository.models[name].default is not None:
                log.info("model %s left the repository: unloading", name)
                await self.repository.unload(name)
            self.required.discard(name)
        for name in sorted(on_disk):
            # a version a source installs on purpose is tried, even one that failed before
            await self._load_logged(name, retry_failed=name in moved)
        if self.sources is not None:
            await self.sources.settle(self.repository)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
