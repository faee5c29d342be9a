"""AdmissionReview v1 in, AdmissionReview v1 out: the injector's decision, with no I/O.

`parse` checks what the API server sent and raises `ReviewError` (an HTTP 400) for
anything that is not an ``admission.k8s.io/v1`` AdmissionReview with a request. `admit`
answers it: a JSONPatch for a pod that gets the sidecar, ``allowed: true`` with no patch
for every other object and pod. A pod that opted in but cannot be injected (a bad
annotation, or an error of the injector itself) is admitted unchanged with a warning that
``kubectl`` shows, unless ``on_error`` is ``deny``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from .annotations import InjectionError, Policy, options, skip_reason
from .mutators import mutate, notes

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
log = logging.getLogger("sidecar.injector")


class ReviewError(ValueError):
    """A request that is not an AdmissionReview v1; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Request:
    """The parts of an AdmissionReview's ``request`` that the injector reads."""

    uid: str
    kind: str  # group/version/kind, e.g. "/v1/Pod"
    operation: str
    namespace: str
    object: Mapping[str, Any] | None


def parse(body: bytes) -> Request:
    """Parse and check an AdmissionReview request body."""
    try:
        review = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"the body is not JSON ({exc}); send an {API_VERSION} {KIND}") from None
    if not isinstance(review, dict):
        raise ReviewError(f"the body is JSON but not an object; send an {API_VERSION} {KIND}")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise ReviewError(f"apiVersion {review.get('apiVersion')!r} kind {review.get('kind')!r} is not supported; "
                          f"send {API_VERSION} {KIND} (admissionReviewVersions: [v1])")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError(f"the {KIND} has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing: the response must echo it")
    gvk = request.get("kind")
    if not isinstance(gvk, dict):
        raise ReviewError("request.kind is missing: expected {group, version, kind}")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError("request.object is not an object")
    namespace = request.get("namespace") or ((obj or {}).get("metadata") or {}).get("namespace") or ""
    return Request(uid=uid, kind=f"{gvk.get('group', '')}/{gvk.get('version', '')}/{gvk.get('kind', '')}",
                   operation=str(request.get("operation", "")), namespace=str(namespace), object=obj)


def response(uid: str, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None,
             denied: str | None = None) -> dict[str, Any]:
    """An AdmissionReview v1 response: allowed unless ``denied`` gives the reason."""
    answer: dict[str, Any] = {"uid": uid, "allowed": denied is None}
    if denied is not None:
        answer["status"] = {"code": 400, "reason": "BadRequest", "message": denied}
    if patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if warnings:
        answer["warnings"] = warnings
    return {"apiVersion": API_VERSION, "kind": KIND, "response": answer}


def _name(request: Request) -> str:
    metadata = (request.object or {}).get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName', '')}*"
    return f"{request.namespace}/{name}"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What happens to one pod: a patch and warnings, or the reason it is left alone."""

    patch: list[dict[str, Any]]
    warnings: list[str]
    skipped: str | None = None


def decide(pod: Mapping[str, Any], namespace: str, policy: Policy) -> Decision:
    """The decision for one pod; raises `InjectionError` when it opted in but cannot be injected."""
    reason = skip_reason(pod, namespace, policy)
    if reason is not None:
        return Decision([], [], reason)
    opts = options(pod, policy)
    return Decision(mutate(pod, opts), [f"shadowserve sidecar: {note}" for note in notes(pod, opts)])


def admit(request: Request, policy: Policy, on_error: str = "allow") -> dict[str, Any]:
    """Answer one admission request.

    Example::

        review = admit(parse(body), Policy(image="sidecar:1", native=True, exclude_namespaces=frozenset()))
    """
    if request.kind != "/v1/Pod" or request.operation != "CREATE" or request.object is None:
        return response(request.uid)
    try:
        decision = decide(request.object, request.namespace, policy)
    except InjectionError as exc:
        problem = f"shadowserve sidecar not injected: {exc}"
    except Exception as exc:  # the injector's own bug must not block pods unless asked to
        log.exception("pod %s: injection failed", _name(request))
        problem = f"shadowserve sidecar not injected: injector error: {type(exc).__name__}: {exc}"
    else:
        if decision.skipped is not None:
            log.debug("pod %s: not injected: %s", _name(request), decision.skipped)
            return response(request.uid)
        log.info("pod %s: sidecar injected", _name(request))
        return response(request.uid, decision.patch, decision.warnings)
    log.warning("pod %s: %s", _name(request), problem)
    if on_error == "deny":
        return response(request.uid, denied=problem)
    return response(request.uid, warnings=[problem])
