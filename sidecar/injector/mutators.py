"""Pure mutators: a pod (a dict, as the API server sends it) and `Options` in, JSONPatch out.

Each mutator reads the pod as it was admitted and returns RFC 6902 operations; `mutate`
concatenates them. No mutator touches the pod it is given, so they compose and test one
by one, and a pod that already has the sidecar is never passed in (`skip_reason`).

Traffic reaches the sidecar through the Service's *named* target ports: the model
container's ``http`` and ``grpc`` ports become ``model-http`` and ``model-grpc`` and the
sidecar takes the names over, so a Service with ``targetPort: http`` now sends to the
sidecar, which forwards to the model on localhost. Probes and lifecycle hooks of the model
container that named those ports are rewritten to the port numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .annotations import (
    SIDECAR_GRPC_PORT,
    SIDECAR_HTTP_PORT,
    SIDECAR_METRICS_PORT,
    SIDECAR_NAME,
    STATUS,
    Options,
)

Op = dict[str, Any]
Pod = Mapping[str, Any]

ROUTED_PORTS = ("http", "grpc")
RECORDS_VOLUME, CONFIG_VOLUME, TMP_VOLUME = "shadowserve-records", "shadowserve-config", "shadowserve-tmp"
RECORDS_DIR, CONFIG_DIR = "/records", "/etc/shadowserve"
CONFIG_KEY = "sidecar.yaml"
UID = 10001  # the sidecar image's user
# A plain sidecar container gets SIGTERM together with the model: it keeps proxying while
# the endpoints controller takes the pod out of the Service (a native sidecar outlives the model).
PRE_STOP_SECONDS = 5
_HANDLERS = ("startupProbe", "readinessProbe", "livenessProbe")


def pointer(*tokens: str | int) -> str:
    """A JSON pointer (RFC 6901) from raw tokens: ``pointer("metadata", "annotations", "a/b")``."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


def _append(parent: Mapping[str, Any], path: tuple[str | int, ...], key: str, items: list[Any]) -> list[Op]:
    """Append items to the list ``parent[key]``, creating it when absent or empty."""
    if not items:
        return []
    if not parent.get(key):
        return [{"op": "add", "path": pointer(*path, key), "value": list(items)}]
    return [{"op": "add", "path": pointer(*path, key, "-"), "value": item} for item in items]


def _routed(pod: Pod, options: Options) -> dict[str, int]:
    """The model container's ports that the sidecar takes over: name → number."""
    container = pod["spec"]["containers"][options.container]
    return {p["name"]: int(p["containerPort"]) for p in container.get("ports") or []
            if p.get("name") in ROUTED_PORTS}


def route_ports(pod: Pod, options: Options) -> list[Op]:
    """Rename the model's ``http``/``grpc`` ports, and point its probes at the numbers."""
    base = ("spec", "containers", options.container)
    container = pod["spec"]["containers"][options.container]
    routed = _routed(pod, options)
    ops: list[Op] = []
    for index, port in enumerate(container.get("ports") or []):
        if port.get("name") in routed:
            ops.append({"op": "replace", "path": pointer(*base, "ports", index, "name"),
                        "value": f"model-{port['name']}"})
    lifecycle = container.get("lifecycle") or {}
    handlers: list[tuple[tuple[str, ...], Any]] = [((probe,), container.get(probe)) for probe in _HANDLERS]
    handlers += [(("lifecycle", hook), lifecycle.get(hook)) for hook in ("postStart", "preStop")]
    for where, handler in handlers:
        for action in ("httpGet", "tcpSocket"):
            port = ((handler or {}).get(action) or {}).get("port")
            if isinstance(port, str) and port in routed:
                ops.append({"op": "replace", "path": pointer(*base, *where, action, "port"), "value": routed[port]})
    return ops


def _args(options: Options) -> list[str]:
    args = [f"--listen=0.0.0.0:{SIDECAR_HTTP_PORT}", f"--grpc-listen=0.0.0.0:{SIDECAR_GRPC_PORT}",
            f"--metrics-port={SIDECAR_METRICS_PORT}", f"--primary=http://127.0.0.1:{options.http_port}",
            f"--primary-grpc=127.0.0.1:{options.grpc_port}"]
    for shadow in options.shadows:
        fraction = "" if shadow.fraction is None else f"@{shadow.fraction:g}"
        args.append(f"--shadow={shadow.name}={shadow.url}{fraction}")
    if options.canary:
        args.append(f"--canary={options.canary}")
    if options.canary_grpc:
        args.append(f"--canary-grpc={options.canary_grpc}")
    if options.record:
        args.append(f"--record-dir={RECORDS_DIR}/live/$(POD_NAME)")  # one directory per pod on a shared claim
    if options.config_map:
        args.append(f"--config={CONFIG_DIR}/{CONFIG_KEY}")
    return [*args, "--log-format=json"]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": SIDECAR_METRICS_PORT}, "periodSeconds": period,
            "failureThreshold": failures}


_REFERENCE = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")  # $(NAME) in an env value; $$( escapes


def tracing_env(pod: Pod, options: Options) -> list[dict[str, Any]]:
    """The model container's ``OTEL_*`` variables for the sidecar, so that it traces to the same
    collector as the model: all but ``OTEL_SERVICE_NAME`` (the sidecar keeps its own, ``sidecar``),
    with the model's variables they refer to as ``$(NAME)`` (a downward-API ``POD_NAME``, say) first."""
    env = [e for e in pod["spec"]["containers"][options.container].get("env") or [] if isinstance(e, dict)]
    by_name = {e.get("name"): e for e in env}
    tracing = [e for e in env if str(e.get("name", "")).startswith("OTEL_") and e.get("name") != "OTEL_SERVICE_NAME"]
    referred: list[dict[str, Any]] = []
    for entry in tracing:
        for name in _REFERENCE.findall(str(entry.get("value", ""))):
            if name in by_name and not name.startswith("OTEL_") and by_name[name] not in referred:
                referred.append(by_name[name])
    return referred + tracing


def sidecar_container(pod: Pod, options: Options) -> dict[str, Any]:
    """The sidecar container for this pod."""
    routed = _routed(pod, options)
    http = "http" if "http" in routed else "sidecar-http"
    grpc = "grpc" if "grpc" in routed else "sidecar-grpc"
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if options.record:
        mounts.append({"name": RECORDS_VOLUME, "mountPath": RECORDS_DIR})
    if options.config_map:
        mounts.append({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": options.image,
        "args": _args(options),
        "ports": [{"name": http, "containerPort": SIDECAR_HTTP_PORT, "protocol": "TCP"},
                  {"name": grpc, "containerPort": SIDECAR_GRPC_PORT, "protocol": "TCP"},
                  {"name": "sidecar-metrics", "containerPort": SIDECAR_METRICS_PORT, "protocol": "TCP"}],
        # The startup probe must not wait for the model: a native sidecar's startup gates the
        # model container's start, and readiness (/readyz) follows the model's.
        "startupProbe": _probe("/healthz", 1, 30),
        "readinessProbe": _probe("/readyz", 5, 2),
        "livenessProbe": _probe("/healthz", 10, 3),
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory},
                      "limits": {"memory": options.memory}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    env: list[dict[str, Any]] = []
    if options.record:  # the recording directory is per pod: --record-dir names it
        env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env += [e for e in tracing_env(pod, options) if e.get("name") not in {x["name"] for x in env}]
    if env:
        container["env"] = env
    if options.native:
        container["restartPolicy"] = "Always"
    else:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}}
    return container


def add_sidecar(pod: Pod, options: Options) -> list[Op]:
    """Append the sidecar: to ``initContainers`` as a native sidecar, else to ``containers``."""
    key = "initContainers" if options.native else "containers"
    return _append(pod["spec"], ("spec",), key, [sidecar_container(pod, options)])


def add_volumes(pod: Pod, options: Options) -> list[Op]:
    """The sidecar's volumes: scratch space, and the recording and configuration volumes asked for."""
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}]
    if options.record_claim:
        volumes.append({"name": RECORDS_VOLUME, "persistentVolumeClaim": {"claimName": options.record_claim}})
    elif options.record:
        volumes.append({"name": RECORDS_VOLUME, "emptyDir": {"sizeLimit": "2Gi"}})
    if options.config_map:
        volumes.append({"name": CONFIG_VOLUME, "configMap": {"name": options.config_map}})
    return _append(pod["spec"], ("spec",), "volumes", volumes)


def mark_injected(pod: Pod, options: Options) -> list[Op]:
    """Record the injection in an annotation, for people; idempotence rests on the container."""
    if "metadata" not in pod:
        return [{"op": "add", "path": "/metadata", "value": {"annotations": {STATUS: "injected"}}}]
    if pod["metadata"].get("annotations") is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": {STATUS: "injected"}}]
    return [{"op": "add", "path": pointer("metadata", "annotations", STATUS), "value": "injected"}]


def notes(pod: Pod, options: Options) -> list[str]:
    """Warnings for the pod's author: what the injection could not arrange by itself."""
    routed = _routed(pod, options)
    return [f"the model container names no {name!r} port, so Services that target it by number bypass the "
            f"sidecar: name the port {name!r} or target the sidecar's port {port}"
            for name, port in (("http", SIDECAR_HTTP_PORT), ("grpc", SIDECAR_GRPC_PORT)) if name not in routed]


MUTATORS: tuple[Callable[[Pod, Options], list[Op]], ...] = (route_ports, add_sidecar, add_volumes, mark_injected)


def mutate(pod: Pod, options: Options) -> list[Op]:
    """Every mutator's operations, in order: the whole patch for one pod.

    Example::

        patch = mutate(pod, options(pod, policy))
    """
    return [op for mutator in MUTATORS for op in mutator(pod, options)]
