"""Restricted API groups, as Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol``.

A restriction names API groups and a header ``key=value``; a request to a group of a
restriction gets through only when it carries that header with that value. HTTP
checks the header ``<key>``, gRPC the metadata ``triton-grpc-protocol-<key>`` (gRPC
metadata keys are lowercase), exactly as Triton does. A group may belong to one
restriction only; groups of no restriction are open (the default, as in Triton).

This module is pure: the policy is parsed from settings once and consulted per request
by the transports (`serving.http` before the endpoint runs, and the gRPC interceptor
in `serving.grpc_access` before the request message is even decoded).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable, Mapping

# Triton's groups; trace and logging are refused by this server anyway, but a restriction may
# name them, as Triton's flags do.
GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
          "trace", "logging")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

_GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_METHOD_GROUPS = {
    **{_GRPC_SERVICE + m: "health" for m in ("ServerLive", "ServerReady", "ModelReady")},
    **{_GRPC_SERVICE + m: "metadata" for m in ("ServerMetadata", "ModelMetadata")},
    **{_GRPC_SERVICE + m: "inference" for m in ("ModelInfer", "ModelStreamInfer")},
    _GRPC_SERVICE + "ModelConfig": "model-config",
    _GRPC_SERVICE + "ModelStatistics": "statistics",
    **{_GRPC_SERVICE + m: "model-repository"
       for m in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")},
    **{_GRPC_SERVICE + m: "shared-memory"
       for m in ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                 "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")},
    _GRPC_SERVICE + "TraceSetting": "trace",
    _GRPC_SERVICE + "LogSettings": "logging",
    # Triton: "for GRPC endpoint, this value also exposes GRPC health check protocol"
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
}


def http_group(path: str) -> str:
    """The API group of a v2 HTTP path (one the router accepted); "" for none."""
    parts = path.strip("/").split("/")[1:]  # without the leading "v2"
    if not parts or parts == [""]:
        return "metadata"  # GET /v2
    if parts[0] == "health":
        return "health"
    if parts[0] == "repository":
        return "model-repository"
    if parts[0] == "models":
        if parts[1:] == ["stats"]:
            return "statistics"
        action = parts[-1] if len(parts) > 2 else ""
        if len(parts) == 4 and parts[2] == "versions":
            action = ""  # /v2/models/<m>/versions/<v>: the version's metadata
        return {"infer": "inference", "ready": "health", "config": "model-config", "stats": "statistics"}.get(
            action, "metadata")
    if parts[0] in ("systemsharedmemory", "cudasharedmemory"):
        return "shared-memory"
    return ""


@dataclasses.dataclass(frozen=True)
class Restriction:
    """One ``<groups>:<key>=<value>``: the groups, and the header that opens them."""

    groups: frozenset[str]
    key: str  # lowercase: HTTP header names are case-insensitive, gRPC metadata keys lowercase
    value: str = dataclasses.field(repr=False)  # a credential: never in a repr, a log or a message


def parse_restrictions(text: str) -> tuple[Restriction, ...]:
    """``health,inference:infer-key=v`` (``;`` between several); raises ValueError with the reason."""
    restrictions = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        groups_text, sep, header = part.partition(":")
        key, eq, value = header.partition("=")
        key = key.strip().lower()
        if not sep or not eq or not key or not value:
            raise ValueError("give <group>[,<group>...]:<key>=<value>, e.g. model-repository:admin-key=$ADMIN_KEY")
        groups = [g.strip() for g in groups_text.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if not groups or unknown:
            raise ValueError(f"unknown API group(s) {unknown or groups_text!r}; the groups are {', '.join(GROUPS)}")
        if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in key):
            raise ValueError(f"header key {key!r} may hold only letters, digits and '-', '_', '.'")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("the header value may not hold control characters")
        restrictions.append(Restriction(frozenset(groups), key, value))
    if not restrictions:
        raise ValueError("give <group>[,<group>...]:<key>=<value>, e.g. model-repository:admin-key=$ADMIN_KEY")
    return tuple(restrictions)


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """Which API groups need which header; nothing restricted by default."""

    restrictions: tuple[Restriction, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for restriction in self.restrictions:
            twice = seen & restriction.groups
            if twice:
                raise ValueError(f"API group(s) {', '.join(sorted(twice))} given in more than one restriction; "
                                 "a group may belong to one only (as in Triton)")
            seen |= restriction.groups

    @classmethod
    def of(cls, restrictions: Iterable[Restriction]) -> AccessPolicy:
        return cls(tuple(restrictions))

    def restricted(self, group: str) -> Restriction | None:
        return next((r for r in self.restrictions if group in r.groups), None)

    def denial(self, group: str, headers: Mapping[str, str], prefix: str = "") -> str | None:
        """The message to refuse a request with, or None when it may go on.

        ``prefix`` is "" for HTTP and `GRPC_HEADER_PREFIX` for gRPC. ``headers`` must be
        looked up case-insensitively for HTTP (aiohttp's are) and by lowercase key for
        gRPC. The expected value is compared in constant time.
        """
        restriction = self.restricted(group)
        if restriction is None:
            return None
        header = prefix + restriction.key
        given = headers.get(header)
        if given is not None and hmac.compare_digest(given.encode(), restriction.value.encode()):
            return None
        kind = "protocol" if prefix else "API"
        return (f"This {kind} is restricted, expecting header '{header}': the {group} endpoints need it, "
                "with the value the server was started with")

    def describe(self, prefix: str = "") -> str:
        """The restricted groups and the headers they need, for the start-up log (never the values)."""
        return "; ".join(f"{','.join(sorted(r.groups))} need {prefix}{r.key}" for r in self.restrictions) or "none"
