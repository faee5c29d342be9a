"""The registry overlays: the pull init container, serve --model-source, the sidecar's registry, all wired up.

Each command line is parsed by the parser of the program that runs it (shadowserve-registry,
serve, the sidecar's configuration file), with the values Kubernetes substitutes from the
ConfigMap, so a flag, a URI or a key that does not exist fails here rather than in a pod.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from model_registry.cli import build_parser as registry_parser
from model_registry.uris import parse_model_uri
from serving import settings as serve_settings
from sidecar.config import file as sidecar_config

from .kube import container, find, render
from .test_dockerfile import stages

PULLING = ["overlays/registry", "overlays/registry-shadow", "overlays/registry-canary"]
WITH_SIDECAR = ["overlays/registry-shadow", "overlays/registry-canary"]
CREDENTIALS = {"MLFLOW_TRACKING_TOKEN": "token", "MLFLOW_TRACKING_USERNAME": "username",
               "MLFLOW_TRACKING_PASSWORD": "password"}


def _models(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The model Deployments' pod specs, by track."""
    return {r["metadata"]["labels"]["shadowserve.io/track"]: r["spec"]["template"]["spec"] for r in resources
            if r["kind"] == "Deployment" and r["metadata"]["labels"].get("app.kubernetes.io/component") == "model"}


def _environment(resources: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    """A container's variables as Kubernetes sets them, the ConfigMap's values looked up; Secrets left out."""
    values = {}
    for variable in spec.get("env", []):
        source = variable.get("valueFrom", {})
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            values[variable["name"]] = find(resources, "ConfigMap", ref["name"])["data"][ref["key"]]
    return values


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    for name, value in env.items():
        args = [arg.replace(f"$({name})", value) for arg in args]
    assert "$(" not in " ".join(args), args
    return args


def _check_registry_env(resources: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    """The registry from the ConfigMap, an http(s) server; credentials only from the optional Secret."""
    env = {v["name"]: v for v in spec["env"]}
    assert _environment(resources, spec)["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    for variable, key in CREDENTIALS.items():
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "shadowserve-registry-credentials", "key": key,
                                                              "optional": True}, variable


@pytest.mark.parametrize("path", PULLING)
def test_every_model_pod_pulls_its_alias_before_serve_starts(path: str) -> None:
    resources = render(path)
    models = _models(resources)
    assert set(models) == ({"primary", "candidate"} if path in WITH_SIDECAR else {"primary"})
    for track, spec in models.items():
        pull = container(spec, "pull-model")
        assert pull in spec["initContainers"] and "restartPolicy" not in pull, "runs to completion before serve"
        assert pull["image"].startswith("registry.example.com/shadowserve/sidecar:"), "the torch-free image"
        assert pull["command"] == ["shadowserve-registry"]
        env = _environment(resources, pull)
        args = registry_parser().parse_args(_expand(pull["args"], env))  # the CLI's own parser
        assert args.command == "pull" and str(args.dest) == "/models"
        (uri,) = (parse_model_uri(u) for u in args.uris)
        assert uri.alias == ("champion" if track == "primary" else "challenger"), track
        _check_registry_env(resources, pull)
        assert env["HOME"] == "/tmp"
        pull_mounts = {m["mountPath"]: m for m in pull["volumeMounts"]}
        model = container(spec, "model")
        served = {m["mountPath"]: m for m in model["volumeMounts"]}["/models"]
        assert served == {"name": pull_mounts["/models"]["name"], "mountPath": "/models", "readOnly": True}
        assert not pull_mounts["/models"].get("readOnly")
        assert "--model-repository=/models" in model["args"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[served["name"]]["emptyDir"]["sizeLimit"], "pulled models count against the node's disk"
        assert volumes[pull_mounts["/tmp"]["name"]]["emptyDir"]


@pytest.mark.parametrize("path", WITH_SIDECAR)
def test_the_sidecar_judges_what_the_candidate_serves(path: str) -> None:
    """The shadow's or canary's `model:` is the candidate's pulled URI, and the sidecar reaches the same
    registry: decisions and compare reports name the version the candidate actually serves."""
    resources = render(path)
    models = _models(resources)
    candidate_uri = _environment(resources, container(models["candidate"], "pull-model"))["SHADOWSERVE_MODEL_URI"]
    config = sidecar_config.from_mapping(
        yaml.safe_load(find(resources, "ConfigMap", "shadowserve-sidecar-config")["data"]["sidecar.yaml"]))
    named = [shadow.model for shadow in config.shadows] + ([config.canary.model] if config.canary else [])
    assert [str(uri) for uri in named] == [candidate_uri]
    sidecar = container(models["primary"], "shadowserve-sidecar")
    _check_registry_env(resources, sidecar)
    pull = container(models["primary"], "pull-model")
    assert _environment(resources, sidecar)["MLFLOW_TRACKING_URI"] == \
        _environment(resources, pull)["MLFLOW_TRACKING_URI"]


def test_canary_from_the_registry_has_an_analysis() -> None:
    """The verdict (the promotion's evidence) says `ready` only after an analysis."""
    resources = render("overlays/registry-canary")
    config = sidecar_config.from_mapping(
        yaml.safe_load(find(resources, "ConfigMap", "shadowserve-sidecar-config")["data"]["sidecar.yaml"]))
    assert config.canary is not None and config.canary.analysis is not None
    assert config.canary.http == "http://shadowserve-model-candidate:8000"


def test_serve_follows_the_alias_with_model_source() -> None:
    """serve's own parser, given the container's arguments and environment over the image's ENV."""
    resources = render("overlays/registry-poll")
    spec = _models(resources)["primary"]
    model = container(spec, "model")
    assert "initContainers" not in spec
    image_env = dict(item.split("=", 1) for keyword, rest in stages()["model"] if keyword == "ENV"
                     for item in rest.split())
    assert image_env["SERVING_MODEL_REPOSITORY"] == "/models", "the variable the overlay must empty"
    env = _environment(resources, model)
    settings = serve_settings.parse(_expand(model["args"], env), environ={**image_env, **env})
    assert settings.model_source == ("models:/classifier@champion",)
    assert settings.model_repository is None
    assert settings.model_control_mode == "poll" and settings.repository_poll_secs <= 60
    _check_registry_env(resources, model)
    cache = {m["mountPath"]: m for m in model["volumeMounts"]}[str(settings.model_cache_dir)]
    assert not cache.get("readOnly")
    assert {v["name"]: v for v in spec["volumes"]}[cache["name"]]["emptyDir"]["sizeLimit"]
