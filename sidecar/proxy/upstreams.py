"""The upstreams of one configuration: the primary's clients, the shadows and the canary's.

A reload builds new `Upstreams` and swaps them in; requests already running keep the one
they started with. Shadows, the canary and its copies whose configuration did not change
carry over (connections, copies in flight); the ones replaced or removed finish and close.
The canary's weight is not here: it changes at run time (`sidecar.canary.controller`).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from ..config.canary import CanaryConfig
from ..config.file import Config, PrimaryConfig, ShadowConfig
from ..config.headers import PASS_ALL
from ..mirror.budget import MemoryBudget
from ..mirror.metrics import MirrorMetrics
from ..mirror.shadow import Shadow
from ..routing import PRIMARY, needs_key
from ..upstream.client import HttpUpstream, grpc_channel

log = logging.getLogger(__name__)

__all__ = ["MIN_BUFFER", "PRIMARY", "CanaryUpstream", "Upstreams", "build", "close", "retire"]

MIN_BUFFER = 1024 * 1024  # bodies up to this size are read whole even when nothing mirrors them


class CanaryUpstream:
    """The canary's clients, and the shadow that carries copies of canary-served requests to the primary."""

    def __init__(self, config: CanaryConfig, http: HttpUpstream | None, grpc_channel: grpc.aio.Channel | None,
                 copies: Shadow | None) -> None:
        self.config = config
        self.http = http
        self.grpc = grpc_channel
        self.copies = copies  # records name it "primary"; None when copy_fraction is 0
        self.header = config.sticky_header
        self.grpc_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}


class Upstreams:
    """The primary's clients, the shadows and the canary of one configuration, and what routing reads of it."""

    def __init__(self, config: Config, primary: HttpUpstream, primary_grpc: grpc.aio.Channel | None,
                 shadows: tuple[Shadow, ...], canary: CanaryUpstream | None = None) -> None:
        self.config = config
        self.primary = primary
        self.primary_grpc = primary_grpc
        self.shadows = shadows
        self.canary = canary
        self.needs_key = needs_key([s.config.fraction for s in shadows])
        copies = [canary.copies.config.max_body_bytes] if canary is not None and canary.copies is not None else []
        self.buffer_limit = max([MIN_BUFFER, *(s.config.max_body_bytes for s in shadows), *copies])
        self.sample_header = config.sampling.header
        self.observe_fraction = config.drift.fraction if config.drift is not None else 0.0  # live drift
        self.grpc_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}


def _primary_http(config: PrimaryConfig) -> HttpUpstream:
    return HttpUpstream(config.http, config.timeout_secs, config.connect_timeout_secs, config.max_connections)


def _copies_config(config: Config) -> ShadowConfig | None:
    canary = config.canary
    if canary is None or canary.copy_fraction <= 0:
        return None
    primary = config.primary
    # The copy goes to the pod's own primary, which saw the client's headers anyway: keep them all.
    return ShadowConfig(PRIMARY, primary.http, primary.grpc, canary.copy_fraction, primary.timeout_secs,
                        headers=PASS_ALL)


def _canary(config: Config, metrics: MirrorMetrics, previous: Upstreams | None,
            budget: MemoryBudget | None) -> CanaryUpstream | None:
    canary = config.canary
    if canary is None:
        return None
    old = previous.canary if previous is not None else None
    if old is not None and canary.same_upstream(old.config):
        http, channel = old.http, old.grpc
    else:
        old = None
        http = (HttpUpstream(canary.http, canary.timeout_secs, canary.connect_timeout_secs, canary.max_connections)
                if canary.http else None)
        channel = grpc_channel(canary.grpc) if canary.grpc else None
    copy_config = _copies_config(config)
    kept = previous.canary.copies if previous is not None and previous.canary is not None else None
    copies = None
    if copy_config is not None:
        copies = kept if kept is not None and kept.config == copy_config else Shadow(copy_config, metrics, budget)
    upstream = CanaryUpstream(canary, http, channel, copies)
    if old is not None:
        upstream.grpc_calls = old.grpc_calls
    return upstream


def build(config: Config, metrics: MirrorMetrics, previous: Upstreams | None = None,
          budget: MemoryBudget | None = None) -> Upstreams:
    """The upstreams of ``config``, reusing what ``previous`` has that did not change; every copy holds ``budget``."""
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
            shadows.append(Shadow(shadow_config, metrics, budget))
    upstreams = Upstreams(config, primary, channel, tuple(shadows), _canary(config, metrics, previous, budget))
    if previous is not None and channel is previous.primary_grpc:
        upstreams.grpc_calls = previous.grpc_calls
    return upstreams


async def retire(previous: Upstreams, current: Upstreams, shadow_grace: float) -> None:
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
    old, new = previous.canary, current.canary
    if old is not None:
        grace = old.config.timeout_secs
        if old.http is not None and (new is None or new.http is not old.http):
            waits.append(old.http.close(grace))
        if old.grpc is not None and (new is None or new.grpc is not old.grpc):
            waits.append(old.grpc.close(grace=grace))
        if old.copies is not None and (new is None or new.copies is not old.copies):
            waits.append(old.copies.close(shadow_grace))
    if waits:
        await asyncio.gather(*waits, return_exceptions=True)


async def close(upstreams: Upstreams, shadow_grace: float) -> None:
    """Close everything: shadows get ``shadow_grace`` seconds to finish their copies."""
    canary = upstreams.canary
    copies = [canary.copies] if canary is not None and canary.copies is not None else []
    await asyncio.gather(*(s.close(shadow_grace) for s in (*upstreams.shadows, *copies)), return_exceptions=True)
    await upstreams.primary.close()
    if upstreams.primary_grpc is not None:
        await upstreams.primary_grpc.close()
    if canary is not None:
        if canary.http is not None:
            await canary.http.close()
        if canary.grpc is not None:
            await canary.grpc.close()
