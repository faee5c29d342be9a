"""Every kustomization renders with `kubectl kustomize` and validates with kubernetes-validate --strict."""

from __future__ import annotations

import pytest
import yaml

from .kube import CUSTOM_RESOURCES, K8S, KUSTOMIZATIONS, is_custom, render, validate, versions


def test_every_kustomization_is_tested() -> None:
    """Each kustomization is listed; components render only inside the overlays that use them."""
    found = {str(path.parent.relative_to(K8S)) for path in K8S.rglob("kustomization.yaml")
             if yaml.safe_load(path.read_text())["kind"] == "Kustomization"}
    assert found == set(KUSTOMIZATIONS), "list new kustomizations in tests/k8s/kube.py KUSTOMIZATIONS"


def test_versions_span_1_29_to_the_newest_schema() -> None:
    from kubernetes_validate.utils import latest_version

    assert versions()[0] == "1.29"
    assert versions()[-1] == ".".join(latest_version().split(".")[:2])


@pytest.mark.parametrize("path", sorted(KUSTOMIZATIONS))
def test_renders_and_validates(path: str) -> None:
    resources = render(path)
    assert resources, f"{path} renders nothing"
    failures = {f"{r['kind']}/{r['metadata']['name']}": errors
                for r in resources if not is_custom(r) and (errors := validate(r))}
    assert not failures, failures


@pytest.mark.parametrize("path", sorted(set(KUSTOMIZATIONS) - {"base", "candidate"}))
def test_no_placeholder_images(path: str) -> None:
    """What is applied gives every image a registry and a tag (base and candidate leave it to overlays)."""
    for resource in render(path):
        template = resource.get("spec", {}).get("template") or \
            resource.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
        if not template:
            continue
        for spec in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            image = spec["image"]
            assert "/" in image and ":" in image.rsplit("/", 1)[1], f"{path}: {resource['kind']} image {image}"


def test_custom_resources_are_skipped_only_where_no_schema_exists() -> None:
    """The skip list is needed: kubernetes-validate has no schema for any of them."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    for api_version, kind in CUSTOM_RESOURCES:
        resource = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        with pytest.raises(SchemaNotFoundError):
            kubernetes_validate.validate(resource, versions()[-1], strict=True)
    rendered = {(r["apiVersion"], r["kind"]) for path in KUSTOMIZATIONS for r in render(path)}
    assert set(CUSTOM_RESOURCES) <= rendered, "a skipped kind no manifest uses: drop it from CUSTOM_RESOURCES"


def test_strict_validation_catches_mistakes() -> None:
    """The validator is live: an unknown field and a wrong type both fail, on every version."""
    deployment = next(r for r in render("base") if r["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    assert len(validate(broken)) == len(versions())
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    assert validate(wrong_type)
