"""Golden-file table: each input pod under golden/ through a real AdmissionReview, patched, compared exactly.

``UPDATE_GOLDEN=1 pytest tests/injector`` rewrites the expected files; review the diff.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from sidecar.injector.annotations import Policy
from sidecar.injector.mutators import MUTATORS, mutate, pointer
from sidecar.injector.review import admit, parse
from tests.k8s.kube import container, find, render, validate

GOLDEN = Path(__file__).parent / "golden"
POLICY = Policy(image="registry.example.com/shadowserve/sidecar:0.1.0", native=True,
                exclude_namespaces=frozenset({"kube-system", "kube-public", "kube-node-lease"}))


@dataclasses.dataclass(frozen=True)
class Case:
    injected: bool
    warning: str = ""  # a fragment every warning of the response must include
    native: bool = True  # the injector's --native-sidecars


CASES = {
    "annotation-opt-in": Case(injected=True),
    "label-shadows-recording": Case(injected=True),
    "canary": Case(injected=True),
    "plain-container": Case(injected=True),
    "tracing": Case(injected=True),
    "legacy-cluster": Case(injected=True, warning="no 'grpc' port", native=False),
    "init-containers": Case(injected=True),
    "model-by-annotation": Case(injected=True, warning="names no"),
    "label-false-wins": Case(injected=False),
    "not-opted-in": Case(injected=False),
    "host-network": Case(injected=False),
    "excluded-namespace": Case(injected=False),
    "bad-annotation": Case(injected=False, warning="shadowserve.io/shadows: shadow 'candidate' has fraction 1.5"),
    "port-conflict": Case(injected=False, warning="port 8080, which the sidecar needs"),
}


def review(pod: dict[str, Any], uid: str = "5f0e1c2a-7d61-4c4e-9a3b-2a1f0b9c8d7e") -> dict[str, Any]:
    """An AdmissionReview as kube-apiserver sends it for a pod CREATE."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def answer(pod: dict[str, Any], policy: Policy = POLICY) -> dict[str, Any]:
    """The injector's response to this pod, through the bytes the API server would send."""
    result = admit(parse(json.dumps(review(pod)).encode()), policy)
    assert result["apiVersion"] == "admission.k8s.io/v1" and result["kind"] == "AdmissionReview"
    assert result["response"]["uid"] == "5f0e1c2a-7d61-4c4e-9a3b-2a1f0b9c8d7e"
    assert result["response"]["allowed"] is True
    return result["response"]


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


def dump(pod: dict[str, Any]) -> str:
    return yaml.safe_dump(pod, sort_keys=False, width=120)


def _sidecar_accepts(args: list[str]) -> None:
    """The sidecar's own argument parser takes the injected arguments."""
    from sidecar.config.settings import build_parser

    _, unknown = build_parser().parse_known_args(args)
    assert unknown == [], unknown


def test_every_golden_input_has_a_case() -> None:
    inputs = {path.name.removesuffix(".in.yaml") for path in GOLDEN.glob("*.in.yaml")}
    outputs = {path.name.removesuffix(".out.yaml") for path in GOLDEN.glob("*.out.yaml")}
    assert inputs == set(CASES)
    assert outputs == set(CASES) or os.environ.get("UPDATE_GOLDEN"), "run with UPDATE_GOLDEN=1 to write them"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    case = CASES[name]
    pod = yaml.safe_load((GOLDEN / f"{name}.in.yaml").read_text())
    original = copy.deepcopy(pod)
    response = answer(pod, dataclasses.replace(POLICY, native=case.native))
    assert pod == original, "the pod is not changed in place"
    result = patched(pod, response)
    expected = GOLDEN / f"{name}.out.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(dump(result))
    assert dump(result) == expected.read_text()
    assert ("patch" in response) == case.injected
    warnings = response.get("warnings", [])
    assert bool(warnings) == bool(case.warning) and all(case.warning in w for w in warnings), warnings
    if case.injected:
        assert not validate(result), validate(result)
        _sidecar_accepts(container(result["spec"], "shadowserve-sidecar")["args"])
        again = answer(result, dataclasses.replace(POLICY, native=case.native))
        assert "patch" not in again and "warnings" not in again, "a second call changes nothing"


def test_golden_outputs_are_what_a_cluster_would_run() -> None:
    """Spot checks of the expected files, so a wrong golden file cannot pass unnoticed."""
    native = yaml.safe_load((GOLDEN / "annotation-opt-in.out.yaml").read_text())["spec"]
    sidecar = container(native, "shadowserve-sidecar")
    assert sidecar in native["initContainers"] and sidecar["restartPolicy"] == "Always"
    assert [p["name"] for p in container(native, "model")["ports"]] == ["model-http", "model-grpc", "metrics"]
    assert container(native, "model")["readinessProbe"]["httpGet"]["port"] == 8000
    plain = yaml.safe_load((GOLDEN / "plain-container.out.yaml").read_text())["spec"]
    assert "initContainers" not in plain and container(plain, "shadowserve-sidecar")["lifecycle"]["preStop"]
    assert container(plain, "model")["startupProbe"]["tcpSocket"]["port"] == 8001
    shadows = container(yaml.safe_load((GOLDEN / "label-shadows-recording.out.yaml").read_text())["spec"],
                        "shadowserve-sidecar")["args"]
    assert "--primary=http://127.0.0.1:9000" in shadows and "--shadow=v3=http://classifier-v3:8000@0.25" in shadows
    from sidecar.config.settings import CanaryFlag, parse

    canary = container(yaml.safe_load((GOLDEN / "canary.out.yaml").read_text())["spec"], "shadowserve-sidecar")
    settings = parse(canary["args"], environ={})  # what the sidecar makes of the injected flags
    assert settings.canary == CanaryFlag("http://classifier-candidate:8000", 10.0)
    assert settings.canary_grpc == "classifier-candidate:8001"


def test_a_hand_written_sidecar_is_left_alone() -> None:
    """The shadow overlay's pods already carry the sidecar: opting them in changes nothing."""
    deployment = find(render("overlays/shadow"), "Deployment", "shadowserve-model")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**deployment["spec"]["template"]["metadata"], "namespace": "models",
                        "annotations": {"shadowserve.io/inject": "true"}},
           "spec": deployment["spec"]["template"]["spec"]}
    assert set(answer(pod)) == {"uid", "allowed"}


def test_mutators_are_pure_and_compose() -> None:
    pod = yaml.safe_load((GOLDEN / "label-shadows-recording.in.yaml").read_text())
    from sidecar.injector.annotations import options

    opts = options(pod, POLICY)
    frozen = copy.deepcopy(pod)
    ops = [op for mutator in MUTATORS for op in mutator(pod, opts)]
    assert pod == frozen and ops == mutate(pod, opts) == mutate(pod, opts)
    assert all(op["op"] in ("add", "replace") for op in ops)


@pytest.mark.parametrize(("tokens", "path"), [(("metadata", "annotations", "shadowserve.io/status"),
                                               "/metadata/annotations/shadowserve.io~1status"),
                                              (("a~b", 0, "-"), "/a~0b/0/-")])
def test_pointer(tokens: tuple[str, ...], path: str) -> None:
    assert pointer(*tokens) == path


def test_the_sidecar_traces_where_the_model_does() -> None:
    from sidecar.injector.annotations import Options
    from sidecar.injector.mutators import sidecar_container

    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "ZONE", "value": "eu-1"}, {"name": "UNUSED", "value": "x"},
           {"name": "OTEL_SERVICE_NAME", "value": "classifier"},
           {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
           {"name": "OTEL_RESOURCE_ATTRIBUTES",
            "value": "pod=$(POD_NAME),zone=$(ZONE),literal=$$(UNUSED),gone=$(NOPE)"}]
    pod = {"spec": {"containers": [{"name": "model", "env": env, "ports": [{"name": "http", "containerPort": 8000}]}]}}
    options = Options(image="sidecar:1", native=True, container=0, http_port=8000, grpc_port=8001, record=True)
    names = [e["name"] for e in sidecar_container(pod, options)["env"]]
    # the records' POD_NAME once, the variables the resource attributes refer to, no service name, no $$( escape
    assert names == ["POD_NAME", "ZONE", "OTEL_TRACES_SAMPLER", "OTEL_RESOURCE_ATTRIBUTES"]
    quiet = {"spec": {"containers": [{"name": "model", "env": env[:3]}]}}
    assert "env" not in sidecar_container(quiet, dataclasses.replace(options, record=False))
