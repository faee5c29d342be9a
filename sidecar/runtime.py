"""What a configuration becomes at run time: upstream clients, shadows and routes.

A reload builds a new `Runtime` and swaps it in; requests already running keep the one
they started with. Shadows whose configuration did not change carry over (connections,
copies in flight); the ones replaced or removed finish their copies and close.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from .config import Config, PrimaryConfig
from .metrics import Metrics
from .mirror import Shadow
from .routing import Route, needs_key
from .upstream import HttpUpstream, grpc_channel

log = logging.getLogger(__name__)

PRIMARY = "primary"
MIN_BUFFER = 1024 * 1024  # bodies up to this size are read whole even when nothing mirrors them


class Runtime:
    """The upstreams and shadows of one configuration."""

    def __init__(self, config: Config, primary: HttpUpstream, primary_grpc: grpc.aio.Channel | None,
                 shadows: tuple[Shadow, ...]) -> None:
        self.config = config
        self.primary = primary
        self.primary_grpc = primary_grpc
        self.shadows = shadows
        self.routes = (Route(PRIMARY, 1.0),)  # canary routes join here
        self.needs_key = needs_key([s.config.fraction for s in shadows])
        self.buffer_limit = max([MIN_BUFFER, *(s.config.max_body_bytes for s in shadows)])
        self.sample_header = config.sampling.header
        self.grpc_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}


def _primary_http(config: PrimaryConfig) -> HttpUpstream:
    return HttpUpstream(config.http, config.timeout_secs, config.connect_timeout_secs, config.max_connections)


def build(config: Config, metrics: Metrics, previous: Runtime | None = None) -> Runtime:
    """A runtime for ``config``, reusing what ``previous`` has that did not change."""
    old = previous.config.primary if previous is not None else None
    same_http = previous is not None and old is not None and (old.http, old.timeout_secs, old.connect_timeout_secs,
                                                               old.max_connections) == (
        config.primary.http, config.primary.timeout_secs, config.primary.connect_timeout_secs,
        config.primary.max_connections)
    primary = previous.primary if same_http and previous is not None else _primary_http(config.primary)
    if previous is not None and old is not None and old.grpc == config.primary.grpc:
        channel = previous.primary_grpc
    else:
        channel = grpc_channel(config.primary.grpc) if config.primary.grpc else None
    kept = {s.name: s for s in previous.shadows} if previous is not None else {}
    shadows = []
    for shadow_config in config.shadows:
        existing = kept.get(shadow_config.name)
        if existing is not None and existing.config == shadow_config:
            shadows.append(existing)
        else:
            shadows.append(Shadow(shadow_config, metrics))
    runtime = Runtime(config, primary, channel, tuple(shadows))
    if previous is not None and channel is previous.primary_grpc:
        runtime.grpc_calls = previous.grpc_calls
    return runtime


async def retire(previous: Runtime, current: Runtime, shadow_grace: float) -> None:
    """Close what ``previous`` had that ``current`` does not use, once its requests are done."""
    waits = []
    live = {id(s) for s in current.shadows}
    for shadow in previous.shadows:
        if id(shadow) not in live:
            log.info("shadow %s: retired; its %d copy(ies) in flight may finish", shadow.name, len(shadow.tasks))
            waits.append(shadow.close(shadow_grace))
    if previous.primary is not current.primary:
        waits.append(previous.primary.close(previous.config.primary.timeout_secs))
    if previous.primary_grpc is not None and previous.primary_grpc is not current.primary_grpc:
        waits.append(previous.primary_grpc.close(grace=previous.config.primary.timeout_secs))
    if waits:
        await asyncio.gather(*waits, return_exceptions=True)


async def close(runtime: Runtime, shadow_grace: float) -> None:
    """Close everything: shadows get ``shadow_grace`` seconds to finish their copies."""
    await asyncio.gather(*(s.close(shadow_grace) for s in runtime.shadows), return_exceptions=True)
    await runtime.primary.close()
    if runtime.primary_grpc is not None:
        await runtime.primary_grpc.close()
