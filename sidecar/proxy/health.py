"""Liveness and readiness of the sidecar: ready only while the primary is ready and no drain runs.

Kubernetes then keeps the pod out of its Service until the model has loaded (the
start-up race of a proxy that reports ready before the application), and takes it out
as soon as a drain starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..upstream.client import TooLarge
from .upstreams import Upstreams

PRIMARY_READY_PATH = "/v2/health/ready"
PROBE_TIMEOUT = 2.0
PROBE_MAX_BYTES = 64 * 1024  # a readiness answer is a few bytes; more is not read


class Health:
    """Answers readiness by asking the primary, each time it is asked (probes are infrequent)."""

    def __init__(self, upstreams: Callable[[], Upstreams]) -> None:
        self._upstreams = upstreams
        self.draining = False

    async def primary_ready(self) -> tuple[bool, str]:
        """Whether the primary answers 200 on its v2 readiness endpoint, and what it said."""
        upstream = self._upstreams().primary
        try:
            response = await upstream.send("GET", PRIMARY_READY_PATH, (), timeout=PROBE_TIMEOUT)
            await response.read(PROBE_MAX_BYTES)
            return response.status == 200, f"primary answered {response.status}"
        except (OSError, asyncio.TimeoutError, TooLarge) as exc:
            return False, f"primary unreachable at {upstream.base_url}: {type(exc).__name__}"

    async def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        return await self.primary_ready()
