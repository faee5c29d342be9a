"""Re-read the ``--config`` file when it changes, and on SIGHUP.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file is checked by
``stat`` (inode, size, modification time) every ``--config-poll-secs`` and re-read only
when that changes; the content's digest then decides whether anything really changed.
A file that does not parse or validate is refused with its message, counted
(``sidecar_config_reloads_total{result="rejected"}``), and the configuration in force
stays. No connection is touched: the new configuration applies to the next requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .file import Config, ConfigError
from .metrics import ConfigMetrics
from .overrides import load
from .settings import Settings

log = logging.getLogger(__name__)


class ConfigWatcher:
    """Watches one file; calls ``apply`` with each new valid configuration."""

    def __init__(self, settings: Settings, apply: Callable[[Config], Awaitable[None]], metrics: ConfigMetrics) -> None:
        assert settings.config_file is not None
        self.settings = settings
        self.path: Path = settings.config_file
        self._apply = apply
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._signature = self._stat()
        self._digest = self._read_digest()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the ConfigMap's symlinks
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def trigger(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    async def run(self) -> None:
        """Check every poll interval, or when triggered, until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.config_poll_secs)
                forced = True
            except asyncio.TimeoutError:
                forced = False
            self._wake.clear()
            await self.check(forced)

    async def check(self, forced: bool = False) -> bool:
        """Reload if the file changed (or ``forced``); True when a new configuration was applied."""
        signature = self._stat()
        if signature == self._signature and not forced:
            return False
        self._signature = signature
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            log.error("cannot read %s (%s); the configuration in force stays", self.path, exc.strerror or exc)
            self.metrics.config_reloads.labels("rejected").inc()
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        try:
            config = load(self.settings, data)
        except ConfigError as exc:
            log.error("configuration refused: %s; the configuration in force stays", exc)
            self.metrics.config_reloads.labels("rejected").inc()
            return False
        try:
            await self._apply(config)  # refuses what only applying finds out (an unreadable drift profile)
        except ConfigError as exc:
            log.error("configuration refused: %s; the configuration in force stays", exc)
            self.metrics.config_reloads.labels("rejected").inc()
            return False
        self._digest = digest
        self.metrics.config_reloads.labels("applied").inc()
        self.metrics.config_last_reload.set(time.time())
        return True
