"""What a pod asks for: whether it opts in, and the sidecar's configuration, from its metadata.

A pod opts in with the label or the annotation ``shadowserve.io/inject: "true"``; when
both are set the label wins (as with Istio's ``sidecar.istio.io/inject``). The other
annotations configure the sidecar:

=================================== ===========================================================
annotation                          value
=================================== ===========================================================
``shadowserve.io/shadows``          ``NAME=URL[@FRACTION]``, comma-separated (``--shadow``)
``shadowserve.io/canary``           ``URL@WEIGHT``, WEIGHT a percentage 0..100 (``--canary``)
``shadowserve.io/canary-grpc``      ``HOST:PORT`` of the canary's gRPC server
``shadowserve.io/record``           ``"true"``: record primary/shadow pairs to an emptyDir
``shadowserve.io/record-claim``     a PersistentVolumeClaim to record to instead (implies record)
``shadowserve.io/config-map``       a ConfigMap whose ``sidecar.yaml`` is the ``--config`` file
``shadowserve.io/container``        the model container (default: the one with a port named
                                    ``http``, else the first); its port ``http`` (or its only
                                    port) and ``grpc`` are the primary's, else 8000 and 8001
``shadowserve.io/native-sidecar``   ``"true"`` or ``"false"``: overrides ``--native-sidecars``
=================================== ===========================================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

INJECT = "shadowserve.io/inject"
SHADOWS = "shadowserve.io/shadows"
CANARY = "shadowserve.io/canary"
CANARY_GRPC = "shadowserve.io/canary-grpc"
RECORD = "shadowserve.io/record"
RECORD_CLAIM = "shadowserve.io/record-claim"
CONFIG_MAP = "shadowserve.io/config-map"
CONTAINER = "shadowserve.io/container"
NATIVE = "shadowserve.io/native-sidecar"
STATUS = "shadowserve.io/status"

SIDECAR_NAME = "shadowserve-sidecar"
SIDECAR_HTTP_PORT, SIDECAR_GRPC_PORT, SIDECAR_METRICS_PORT = 8080, 8081, 9090
MODEL_HTTP_PORT, MODEL_GRPC_PORT = 8000, 8001  # serve's defaults, when the container names no port

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TARGET = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class InjectionError(ValueError):
    """A pod that opted in but cannot be injected; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """The injector's side of the decision, resolved at start-up."""

    image: str
    native: bool
    exclude_namespaces: frozenset[str]
    cpu: str = "100m"
    memory: str = "256Mi"


@dataclasses.dataclass(frozen=True)
class Shadow:
    name: str
    url: str
    fraction: float | None = None  # None: the sidecar's default (every request)


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything the mutators need to inject one pod."""

    image: str
    native: bool
    container: int  # index of the model container in spec.containers
    http_port: int
    grpc_port: int
    shadows: tuple[Shadow, ...] = ()
    canary: str | None = None
    canary_grpc: str | None = None
    record: bool = False
    record_claim: str | None = None
    config_map: str | None = None
    cpu: str = "100m"
    memory: str = "256Mi"


def _meta(pod: Mapping[str, Any], field: str) -> Mapping[str, str]:
    value = (pod.get("metadata") or {}).get(field) or {}
    return value if isinstance(value, Mapping) else {}


def is_injected(pod: Mapping[str, Any]) -> bool:
    """True when the pod already has the sidecar, as a container or a native sidecar."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    return any(isinstance(c, Mapping) and c.get("name") == SIDECAR_NAME for c in containers)


def skip_reason(pod: Mapping[str, Any], namespace: str, policy: Policy) -> str | None:
    """Why the pod is left as it is, or None when it gets the sidecar."""
    labels, annotations = _meta(pod, "labels"), _meta(pod, "annotations")
    opt_in = labels[INJECT] if INJECT in labels else annotations.get(INJECT)
    if opt_in != "true":
        return f'not opted in (label or annotation {INJECT}: "true")'
    if namespace in policy.exclude_namespaces:
        return f"namespace {namespace} is excluded from injection"
    if (pod.get("spec") or {}).get("hostNetwork"):
        return "hostNetwork pods are never injected: the sidecar's ports would be the node's"
    if is_injected(pod):
        return "already injected"
    return None


def parse_shadows(value: str) -> tuple[Shadow, ...]:
    """``a=http://x:8000@0.5,b=http://y:8000`` → shadows, in order."""
    shadows: list[Shadow] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, rest = item.partition("=")
        if not sep or not _NAME.match(name) or not rest.startswith(("http://", "https://")):
            raise InjectionError(f"{SHADOWS}: {item!r} is not NAME=URL[@FRACTION], e.g. "
                                 "candidate=http://model-candidate:8000@0.25")
        url, at, tail = rest.rpartition("@")
        fraction: float | None = None
        if at and re.fullmatch(r"[0-9.]+", tail):
            fraction = float(tail)
            if not 0.0 <= fraction <= 1.0:
                raise InjectionError(f"{SHADOWS}: shadow {name!r} has fraction {tail}; use a number from 0 to 1")
        else:
            url = rest
        if any(shadow.name == name for shadow in shadows):
            raise InjectionError(f"{SHADOWS}: the name {name!r} is used twice; give each shadow its own name")
        shadows.append(Shadow(name, url, fraction))
    return tuple(shadows)


def _canary(value: str) -> str:
    url, at, weight = value.rpartition("@")
    try:
        percent = float(weight)
    except ValueError:
        percent = -1.0
    if not at or not url.startswith(("http://", "https://")) or not 0.0 <= percent <= 100.0:
        raise InjectionError(f"{CANARY}: {value!r} is not URL@WEIGHT with WEIGHT 0..100, "
                             "e.g. http://model-candidate:8000@10")
    return value


def _flag(annotations: Mapping[str, str], key: str, default: bool) -> bool:
    value = annotations.get(key)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise InjectionError(f'{key}: {value!r} is neither "true" nor "false"')
    return value == "true"


def _dns_name(annotations: Mapping[str, str], key: str) -> str | None:
    value = annotations.get(key)
    if value is not None and not _DNS_NAME.match(value):
        raise InjectionError(f"{key}: {value!r} is not the name of a Kubernetes object")
    return value


def _model_container(containers: list[Any], annotations: Mapping[str, str]) -> int:
    if not containers:
        raise InjectionError("the pod has no containers")
    wanted = annotations.get(CONTAINER)
    names = [str(c.get("name")) for c in containers]
    if wanted is not None:
        if wanted not in names:
            raise InjectionError(f"{CONTAINER}: no container is named {wanted!r}; the pod has {', '.join(names)}")
        return names.index(wanted)
    for index, container in enumerate(containers):
        if any(port.get("name") == "http" for port in container.get("ports") or []):
            return index
    return 0


def _port(container: Mapping[str, Any], name: str, default: int) -> int:
    ports = container.get("ports") or []
    return next((int(p["containerPort"]) for p in ports if p.get("name") == name), default)


def _http_port(container: Mapping[str, Any]) -> int:
    """The port named http; else the container's only port, when it has one; else serve's 8000."""
    ports = container.get("ports") or []
    only = int(ports[0]["containerPort"]) if len(ports) == 1 and not ports[0].get("name") else MODEL_HTTP_PORT
    return _port(container, "http", only)


def _check_conflicts(spec: Mapping[str, Any]) -> None:
    for volume in spec.get("volumes") or []:
        if str(volume.get("name", "")).startswith("shadowserve-"):
            raise InjectionError(f"volume {volume.get('name')!r}: names starting with shadowserve- are the "
                                 "sidecar's; rename the volume")
    taken = {SIDECAR_HTTP_PORT, SIDECAR_GRPC_PORT, SIDECAR_METRICS_PORT}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for port in container.get("ports") or []:
            if port.get("containerPort") in taken:
                raise InjectionError(f"container {container.get('name')!r} uses port {port['containerPort']}, "
                                     f"which the sidecar needs (it takes {', '.join(map(str, sorted(taken)))})")


def options(pod: Mapping[str, Any], policy: Policy) -> Options:
    """The sidecar this pod asks for; raises `InjectionError` naming the annotation at fault.

    Example::

        opts = options(pod, Policy(image="sidecar:1", native=True, exclude_namespaces=frozenset()))
    """
    annotations = _meta(pod, "annotations")
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    index = _model_container(containers, annotations)
    _check_conflicts(spec)
    canary_grpc = annotations.get(CANARY_GRPC)
    if canary_grpc is not None and not _TARGET.match(canary_grpc):
        raise InjectionError(f"{CANARY_GRPC}: {canary_grpc!r} is not HOST:PORT, e.g. model-candidate:8001")
    record_claim = _dns_name(annotations, RECORD_CLAIM)
    return Options(
        image=policy.image,
        native=_flag(annotations, NATIVE, policy.native),
        container=index,
        http_port=_http_port(containers[index]),
        grpc_port=_port(containers[index], "grpc", MODEL_GRPC_PORT),
        shadows=parse_shadows(annotations.get(SHADOWS, "")),
        canary=_canary(annotations[CANARY]) if CANARY in annotations else None,
        canary_grpc=canary_grpc,
        record=_flag(annotations, RECORD, False) or record_claim is not None,
        record_claim=record_claim,
        config_map=_dns_name(annotations, CONFIG_MAP),
        cpu=policy.cpu,
        memory=policy.memory,
    )
