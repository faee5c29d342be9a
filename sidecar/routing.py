"""Pure routing decisions: which upstream serves a request, which shadows get a copy, what is retried.

Every decision hashes a request key, so the same request is routed and sampled the same
way on every run and every replica. Sampling hashes the sampling header, else the v2
request id: a shadow at fraction 0.1 sees a subset of what a shadow at 0.5 sees, and two
shadows at the same fraction see the same requests, which is what comparing shadows with
each other needs. The canary split hashes the sticky key (`sticky_key`: a configured
header such as ``x-user-id``, else the request id, else a random one), so one user
consistently sees one version; raising the weight only moves keys to the canary, never
back, so a user who saw the canary at 5% still sees it at 10%.

    >>> sampled("req-42", 1.0), sampled("req-42", 0.0)
    (True, False)
    >>> choose("req-42", (Route("primary", 1.0),))
    'primary'
    >>> split("user-7", 0.0), split("user-7", 100.0)
    ('primary', 'canary')
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

_SCALE = float(1 << 64)


def bucket(key: str, salt: str = "") -> float:
    """A stable value in [0, 1) for a key; a salt gives an independent draw for the same key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "big") / _SCALE


def sampled(key: str, fraction: float, salt: str = "") -> bool:
    """Whether a request with this key falls in the sampled ``fraction`` (0..1)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return bucket(key, salt) < fraction


@dataclasses.dataclass(frozen=True)
class Route:
    """An upstream that serves a weighted share of requests."""

    upstream: str
    weight: float


def choose(key: str, routes: Sequence[Route]) -> str:
    """The upstream for a request: by weight, sticky by key (the same key, the same upstream)."""
    total = sum(route.weight for route in routes if route.weight > 0)
    if len(routes) == 1 or total <= 0:
        return routes[0].upstream
    point = bucket(key, "route") * total
    for route in routes:
        if route.weight > 0:
            point -= route.weight
            if point < 0:
                return route.upstream
    return routes[-1].upstream


PRIMARY, CANARY = "primary", "canary"


def split(key: str, weight: float) -> str:
    """``canary`` for ``weight`` percent of keys (0..100, fractions allowed), else ``primary``; sticky by key.

    Weight 0 sends nothing to the canary and 100 everything. The share grows with the weight
    by adding keys: a key on the canary at one weight stays on it at every higher weight.
    """
    if weight <= 0.0:
        return PRIMARY
    if weight >= 100.0:
        return CANARY
    return choose(key, (Route(CANARY, weight), Route(PRIMARY, 100.0 - weight)))


def sticky_key(header: str | None, request_id: str | None, fallback: str) -> str:
    """The canary split's key: the sticky header's value, else the request id, else ``fallback`` (random)."""
    return header or request_id or fallback


def upstream_failed(status: int | None) -> bool:
    """Whether an answer is the upstream's failure: none came (refused, reset, timed out), 429 or 5xx.

    A 4xx other than 429 is the client's mistake, which the primary would repeat.
    """
    return status is None or status == 429 or status >= 500


def retry_on_primary(served: str, status: int | None, *, idempotent: bool, body_held: bool) -> bool:
    """Whether a failed canary answer is retried on the primary: once, for idempotent requests whose body
    is still held (a streamed body is gone), never for an answer of the primary itself."""
    return served == CANARY and idempotent and body_held and upstream_failed(status)


def needs_key(fractions: Sequence[float]) -> bool:
    """Whether sampling at these fractions depends on the key (anything strictly between 0 and 1)."""
    return any(0.0 < f < 1.0 for f in fractions)


def infer_target(path: str) -> tuple[str, str | None] | None:
    """``(model, version)`` for a v2 infer path (``/v2/models/m[/versions/v]/infer``), else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[len("/v2/models/"):-len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None
