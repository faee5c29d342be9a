"""Pure routing decisions: which upstream serves a request and which shadows get a copy.

Every decision hashes a request key (the sampling header, else the v2 request id), so the
same request is routed and sampled the same way on every run and every replica. A shadow
at fraction 0.1 sees a subset of what a shadow at 0.5 sees, and two shadows at the same
fraction see the same requests, which is what comparing shadows with each other needs.
Canary weights (a later issue) are `Route` entries: `choose` picks one by weight.

    >>> sampled("req-42", 1.0), sampled("req-42", 0.0)
    (True, False)
    >>> choose("req-42", (Route("primary", 1.0),))
    'primary'
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
