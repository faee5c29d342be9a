"""AdmissionReview parsing and the answers that carry no patch: other objects, errors, on_error."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.injector.annotations import InjectionError, Policy, parse_shadows
from sidecar.injector.review import ReviewError, admit, parse, response

from .test_mutators import POLICY, review

POD: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "m", "namespace": "models", "annotations": {"shadowserve.io/inject": "true"}},
       "spec": {"containers": [{"name": "model", "image": "m:1"}]}}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not JSON"),
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not an object"),
    (_body({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}),
     "admissionReviewVersions: [v1]"),
    (_body({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}), "is not supported"),
    (_body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "no request"),
    (_body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {}}}),
     "request.uid is missing"),
    (_body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}),
     "request.kind is missing"),
    (_body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {}, "object": [1]}}), "request.object is not an object"),
])
def test_malformed_reviews(body: bytes, message: str) -> None:
    with pytest.raises(ReviewError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


def test_namespace_falls_back_to_the_object() -> None:
    request = review(POD)["request"]
    del request["namespace"]
    assert parse(_body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "request": request})).namespace == "models"


@pytest.mark.parametrize("change", [
    {"operation": "UPDATE"},
    {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}},
    {"object": None, "operation": "DELETE"},
])
def test_only_pod_creation_is_mutated(change: dict[str, Any]) -> None:
    body = review(POD)
    body["request"].update(change)
    assert admit(parse(_body(body)), POLICY)["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_an_injector_error_admits_with_a_warning_unless_deny() -> None:
    broken = {**POD, "spec": {"containers": [42]}}  # a bug-shaped input: not a container mapping
    request = parse(_body(review(broken)))
    allowed = admit(request, POLICY)["response"]
    assert allowed["allowed"] is True and "patch" not in allowed
    assert allowed["warnings"][0].startswith("shadowserve sidecar not injected: injector error: AttributeError")
    denied = admit(request, POLICY, on_error="deny")["response"]
    assert denied["allowed"] is False and denied["status"]["code"] == 400
    assert denied["status"]["message"].startswith("shadowserve sidecar not injected")


def test_bad_annotation_is_denied_with_deny() -> None:
    pod = {**POD, "metadata": {**POD["metadata"], "annotations": {"shadowserve.io/inject": "true",
                                                                   "shadowserve.io/canary": "http://c:8000@200"}}}
    answer = admit(parse(_body(review(pod))), POLICY, on_error="deny")["response"]
    assert answer["allowed"] is False and "shadowserve.io/canary" in answer["status"]["message"]


def test_response_encodes_the_patch() -> None:
    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    answer = response("u", ops, ["w"])["response"]
    assert answer["patchType"] == "JSONPatch" and json.loads(base64.b64decode(answer["patch"])) == ops
    assert answer["warnings"] == ["w"] and set(response("u")["response"]) == {"uid", "allowed"}


@pytest.mark.parametrize(("value", "problem"), [
    ("candidate", "is not NAME=URL"),
    ("candidate=ftp://x", "is not NAME=URL"),
    ("a=http://x:1,a=http://y:1", "used twice"),
    ("a=http://x:1@2", "fraction 2"),
])
def test_bad_shadows(value: str, problem: str) -> None:
    with pytest.raises(InjectionError, match=problem):
        parse_shadows(value)


def test_shadows_keep_at_signs_of_urls() -> None:
    shadow, = parse_shadows("a=http://user@host:8000")
    assert (shadow.url, shadow.fraction) == ("http://user@host:8000", None)


def test_excluded_namespace_policy() -> None:
    policy = Policy(image="s:1", native=True, exclude_namespaces=frozenset({"models"}))
    assert "patch" not in admit(parse(_body(review(POD))), policy)["response"]
    assert "patch" in admit(parse(_body(review(POD))), POLICY)["response"]
