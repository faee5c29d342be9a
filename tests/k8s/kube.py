"""Helpers for the manifest tests: render with `kubectl kustomize`, validate with kubernetes-validate."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OLDEST = (1, 29)  # the oldest Kubernetes the manifests support: native sidecars are on by default

# Every kustomization in k8s/, and what it is (test_render checks the list is complete).
KUSTOMIZATIONS = {
    "base": "the model server",
    "candidate": "the candidate model server (used by overlays)",
    "overlays/cpu": "the model server without a GPU",
    "overlays/shadow": "primary with sidecar, candidate as shadow",
    "overlays/canary": "primary with sidecar, candidate as canary",
    "overlays/drift-job": "shadow plus the drift CronJob",
    "overlays/registry": "the model server, its model pulled from the registry by an init container",
    "overlays/registry-poll": "the model server serving from the registry, following the alias",
    "overlays/registry-shadow": "shadow, primary and candidate pulled from the registry",
    "overlays/registry-canary": "canary, primary and candidate pulled from the registry",
    "injector/base": "the injector webhook (certificate from a variant)",
    "injector/cert-manager": "the injector with a cert-manager certificate",
    "injector/self-signed": "the injector with a bootstrap Job's certificate",
    "observability": "Grafana dashboard and Prometheus rules",
}

# Custom resources: kubernetes-validate ships only Kubernetes' own schemas, so these are
# skipped there, by name, and checked by the tests named here instead.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "tests/k8s/test_model_manifests.py::test_service_monitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "tests/k8s/test_observability.py",
    ("cert-manager.io/v1", "Certificate"): "tests/k8s/test_injector_manifests.py::test_cert_manager_wiring",
    ("cert-manager.io/v1", "Issuer"): "tests/k8s/test_injector_manifests.py::test_cert_manager_wiring",
}


def kubectl() -> str:
    """The kubectl binary: $KUBECTL, on PATH, or beside this Python (a pip-installed kubectl)."""
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl"), str(Path(sys.executable).parent / "kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("kubectl not found: put it on PATH or set KUBECTL (its built-in kustomize renders k8s/)")


def kustomize(*directories: Path) -> list[str]:
    """Run `kubectl kustomize` on each directory, all at once; the rendered YAML of each."""
    binary = kubectl()
    processes = [subprocess.Popen([binary, "kustomize", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for d in directories]
    outputs = []
    for directory, process in zip(directories, processes, strict=True):
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            raise AssertionError(f"kubectl kustomize {directory} failed:\n{err}")
        outputs.append(out)
    return outputs


@functools.lru_cache(maxsize=1)
def _rendered() -> dict[str, str]:
    return dict(zip(KUSTOMIZATIONS, kustomize(*(K8S / path for path in KUSTOMIZATIONS)), strict=True))


def render(path: str | Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize` renders from a directory: one of KUSTOMIZATIONS, or any path."""
    text = _rendered()[path] if path in KUSTOMIZATIONS else kustomize(Path(path))[0]
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(resources: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one resource of this kind (and name)."""
    matches = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a pod spec, init containers first."""
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in containers(pod_spec) if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name}, found {len(matches)}"
    return matches[0]


@functools.lru_cache(maxsize=1)
def versions() -> tuple[str, ...]:
    """Every Kubernetes minor version kubernetes-validate has schemas for, from 1.29 on."""
    from kubernetes_validate.utils import all_versions

    minors = sorted({tuple(int(part) for part in v.split(".")[:2]) for v in all_versions()})
    return tuple(f"{major}.{minor}" for major, minor in minors if (major, minor) >= OLDEST)


def is_custom(resource: dict[str, Any]) -> bool:
    return (resource.get("apiVersion"), resource.get("kind")) in CUSTOM_RESOURCES


@functools.cache
def _validate(document: str) -> tuple[str, ...]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    resource = json.loads(document)
    errors = []
    for version in versions():
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except ValidationError as exc:
            path = ".".join(str(item) for item in exc.path)
            errors.append(f"{version}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(f"{version}: {exc.message} (a custom resource? list it in CUSTOM_RESOURCES)")
    return tuple(errors)


def validate(resource: dict[str, Any]) -> list[str]:
    """kubernetes-validate --strict against every supported version; the errors, or []."""
    return list(_validate(json.dumps(resource, sort_keys=True)))
