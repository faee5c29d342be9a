"""Which request headers (HTTP) and metadata keys (gRPC) a mirrored copy carries to a shadow.

A shadow is a model under test, often run by someone else, in another namespace or
cluster: it must not receive the client's credentials. By default every copy loses the
names in `DEFAULT_DENY` and those starting with a prefix in `DENY_PREFIXES` (the common
credential and session headers of browsers, API gateways and the clouds); a shadow's
``headers.remove`` adds names (``x-my-secret``) or prefixes (``x-corp-auth-*``) to them,
``headers.keep`` exempts named defaults, and ``headers.allow`` switches to an allow-list:
only the names listed, and `ALWAYS` (what a v2 request needs), go. Names are compared in
lower case, as gRPC metadata keys always are.

The canary answers the client, so it gets the client's headers as any upstream does;
only copies are stripped (as Istio mirrors: the shadow is not the route).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .converters import header_name

DEFAULT_DENY = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "cookie2",
    "x-api-key", "api-key", "apikey", "x-apikey", "x-auth-token", "x-access-token", "x-id-token",
    "x-refresh-token", "x-session-token", "x-session-id", "x-csrf-token", "x-xsrf-token", "x-csrftoken",
    "x-amz-security-token", "x-goog-api-key", "x-goog-iam-authorization-token", "x-goog-iam-authority-selector",
    "x-functions-key", "ocp-apim-subscription-key", "x-ms-client-principal", "x-ms-client-principal-id",
    "x-vault-token", "private-token", "x-gitlab-token", "x-forwarded-client-cert", "x-client-cert",
    "ssl-client-cert", "x-ssl-client-cert", "x-serverless-authorization", "x-amzn-oidc-data",
    "x-amzn-oidc-accesstoken", "x-amzn-oidc-identity",
})
DENY_PREFIXES = ("x-amz-security-", "x-goog-iam-", "x-ms-token-", "x-amzn-oidc-", "x-auth-")
# Kept in allow-list mode too: without them a copy is not the same v2 request, or (the W3C trace
# context, which carries no credential) not in the client's trace. `baggage` stays under the
# rules: it can carry user data.
ALWAYS = frozenset({"host", "content-type", "content-encoding", "inference-header-content-length", "x-request-id",
                    "traceparent", "tracestate"})


@dataclasses.dataclass(frozen=True)
class HeaderRules:
    """Header changes for mirrored copies; every name is lower case, ``allow`` None unless allow-list mode."""

    set: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = DEFAULT_DENY
    remove_prefixes: tuple[str, ...] = DENY_PREFIXES
    keep: frozenset[str] = frozenset()
    allow: frozenset[str] | None = None

    def keeps(self, name: str) -> bool:
        """Whether a header (given in lower case) goes with the copy."""
        if self.allow is not None:
            return name in self.allow or name in ALWAYS
        if name in self.keep:
            return True
        return name not in self.remove and not name.startswith(self.remove_prefixes)

    def adding(self, remove: Iterable[str] = (), allow: Iterable[str] | None = None) -> HeaderRules:
        """These rules with more names (or ``prefix*``) removed, or with an allow-list (the start-up flags)."""
        names, prefixes = _split(remove)
        rules = dataclasses.replace(self, remove=self.remove | names, remove_prefixes=self.remove_prefixes + prefixes)
        if allow is not None:
            rules = dataclasses.replace(rules, allow=frozenset(header_name(name) for name in allow))
        return rules


PASS_ALL = HeaderRules(remove=frozenset(), remove_prefixes=())  # copies to the pod's own primary


def _split(names: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact, prefixes = set(), []
    for raw in names:
        if isinstance(raw, str) and raw.endswith("*") and len(raw) > 1:
            prefixes.append(header_name(raw[:-1]))
        else:
            exact.add(header_name(raw))
    return frozenset(exact), tuple(prefixes)


def _names(keys: Mapping[str, Any], key: str) -> list[Any]:
    value = keys.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a list of header names")
    return value


def header_rules(value: Any) -> HeaderRules:
    """A shadow's ``headers`` section: ``set``, ``remove`` (added to the defaults), ``keep``, ``allow``."""
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping with 'set' (name: value), 'remove', 'keep' or 'allow' (lists of names)")
    unknown = sorted(set(value) - {"set", "remove", "keep", "allow"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; use 'set', 'remove', 'keep' and 'allow'")
    keys = dict(value)
    pairs = keys.get("set") or {}
    if not isinstance(pairs, Mapping):
        raise ValueError("'set' must map header names to values")
    sets = tuple((header_name(k), str(v)) for k, v in pairs.items())
    if "allow" in keys:
        if "remove" in keys or "keep" in keys:
            raise ValueError("'allow' lists every header a copy carries: give it alone, without 'remove' or 'keep'")
        return HeaderRules(sets, allow=frozenset(header_name(name) for name in _names(keys, "allow")))
    keep = frozenset(header_name(name) for name in _names(keys, "keep"))
    return HeaderRules(sets, keep=keep).adding(_names(keys, "remove"))
