"""The header rules of a proxy hop: what is forwarded, what a shadow's copy carries, gRPC metadata.

RFC 9110's hop-by-hop fields never cross the hop; a mirrored copy gets its shadow's
header rules and ``-shadow`` appended to its Host, as Envoy does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from multidict import CIMultiDict

from ..config.headers import HeaderRules

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade"})
Metadata = tuple[tuple[str, str | bytes], ...]
# gRPC metadata the channel sets itself (or rejects): never copied onto a forwarded call.
GRPC_RESERVED = frozenset({"content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding",
                           "grpc-accept-encoding", "grpc-message-type", "grpc-status", "grpc-message", "host"})


def _without_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # Copy in C, then delete the few names that must go: faster than filtering in Python.
    out = CIMultiDict(headers)
    connection = out.get("Connection")
    for name in HOP_BY_HOP:
        if name in out:
            del out[name]
    if connection:
        for token in connection.split(","):
            token = token.strip()
            if token and token in out:
                del out[token]
    if "Content-Length" in out:
        del out["Content-Length"]  # set again for the body actually sent
    return out


def forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The request headers to send upstream: all but the hop-by-hop ones (and those named in Connection).

    ``Expect: 100-continue`` is answered by the proxy itself, as Envoy does, so it is not forwarded.
    """
    out = _without_hop_by_hop(headers)
    if "Expect" in out:
        del out["Expect"]
    return out


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The upstream response headers to pass to the client (the length is set by the response itself)."""
    return _without_hop_by_hop(headers)


def shadow_headers(headers: CIMultiDict[str], rules: HeaderRules) -> CIMultiDict[str]:
    """A mirrored copy's headers: the rules applied, and ``-shadow`` appended to the host, as Envoy does."""
    keeps = rules.keeps
    out = CIMultiDict((k, v) for k, v in headers.items() if keeps(k.lower()))
    for name, value in rules.set:
        out[name] = value
    host = out.get("Host")
    if host:
        name, sep, port = host.rpartition(":")
        out["Host"] = f"{name}-shadow:{port}" if sep and port.isdigit() else f"{host}-shadow"
    return out


def shadow_metadata(metadata: Metadata, rules: HeaderRules) -> Metadata:
    """A mirrored gRPC call's metadata, with the shadow's header rules applied."""
    set_names = {name for name, _ in rules.set}
    keeps = rules.keeps
    kept = tuple((k, v) for k, v in metadata if keeps(k) and k not in set_names)
    return kept + rules.set


def forward_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Metadata:
    """Invocation metadata to send upstream: without pseudo-headers and what gRPC sets itself."""
    if not metadata:
        return ()
    return tuple((k, v) for k, v in metadata if not k.startswith(":") and k not in GRPC_RESERVED)
