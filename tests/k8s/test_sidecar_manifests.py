"""The shadow, canary and drift-job overlays: the sidecar, its configuration, the canary weight, the job."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import file as sidecar_config
from sidecar.config import settings as sidecar_settings
from sidecar.drift.cli import build_parser

from .kube import K8S, container, find, render

SIDECAR_OVERLAYS = ["overlays/shadow", "overlays/canary", "overlays/drift-job"]


def _sidecar(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = find(resources, "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    return spec, container(spec, "shadowserve-sidecar")


def _config(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(find(resources, "ConfigMap", "shadowserve-sidecar-config")["data"]["sidecar.yaml"])


@pytest.mark.parametrize("path", SIDECAR_OVERLAYS)
def test_native_sidecar_that_does_not_wait_for_the_model(path: str) -> None:
    spec, sidecar = _sidecar(render(path))
    assert sidecar in spec["initContainers"] and sidecar["restartPolicy"] == "Always"
    # The model starts only once the sidecar's startup probe passes: it must not need the model.
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("path", SIDECAR_OVERLAYS)
def test_sidecar_flags_parse_and_point_at_the_pod(path: str) -> None:
    """The sidecar's own parser accepts its arguments; they match the ports and mounts of the pod."""
    spec, sidecar = _sidecar(render(path))
    settings = sidecar_settings.parse(sidecar["args"], environ={})
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] + spec["initContainers"] for p in c["ports"]}
    assert settings.listen.port == ports["http"] and settings.grpc_listen is not None \
        and settings.grpc_listen.port == ports["grpc"] and settings.metrics_port == ports["sidecar-metrics"]
    assert settings.primary == f"http://127.0.0.1:{ports['model-http']}"
    assert settings.primary_grpc == f"127.0.0.1:{ports['model-grpc']}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == settings.metrics_port
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert settings.config_file is not None
    config_volume = volumes[mounts[str(settings.config_file.parent)]]
    assert config_volume["configMap"]["name"] == "shadowserve-sidecar-config"
    assert settings.record_dir is not None and str(settings.record_dir) == "/records/live/$(POD_NAME)"
    assert volumes[mounts["/records"]]["persistentVolumeClaim"]["claimName"] == "shadowserve-records"
    assert [e["name"] for e in sidecar["env"]] == ["POD_NAME"]


def test_shadow_config_is_valid_and_targets_the_candidate() -> None:
    resources = render("overlays/shadow")
    config = sidecar_config.from_mapping(_config(resources))
    assert [shadow.name for shadow in config.shadows] == ["candidate"]
    service = find(resources, "Service", "shadowserve-model-candidate")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert config.shadows[0].http == f"http://shadowserve-model-candidate:{ports['http']}"
    assert config.shadows[0].grpc == f"shadowserve-model-candidate:{ports['grpc']}"


def test_canary_config_targets_the_candidate() -> None:
    resources = render("overlays/canary")
    data = _config(resources)
    canary = sidecar_config.from_mapping(data).canary
    service = find(resources, "Service", "shadowserve-model-candidate")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert canary is not None
    assert (canary.http, canary.grpc, canary.weight) == (f"http://shadowserve-model-candidate:{ports['http']}",
                                                         f"shadowserve-model-candidate:{ports['grpc']}", 10.0)
    assert data["canary"] == {"http": canary.http, "grpc": canary.grpc, "weight": 10}


def test_canary_weight_is_set_in_one_place(tmp_path: Path) -> None:
    """Changing canary.weight in overlays/canary/sidecar.yaml changes the weight and nothing else."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    values = copy / "overlays" / "canary" / "sidecar.yaml"
    data = yaml.safe_load(values.read_text())
    data["canary"]["weight"] = 25
    values.write_text(yaml.safe_dump(data))
    before, after = render("overlays/canary"), render(copy / "overlays" / "canary")
    changed = [(a["kind"], a["metadata"]["name"]) for a, b in zip(before, after, strict=False) if a != b]
    assert len(before) == len(after) and changed == [("ConfigMap", "shadowserve-sidecar-config")]
    assert _config(after)["canary"]["weight"] == 25
    # The ConfigMap keeps its name, so running sidecars re-read it rather than restarting.
    assert find(after, "ConfigMap")["metadata"]["name"] == find(before, "ConfigMap")["metadata"]["name"]


def test_drift_job_reports_on_the_recorded_segments() -> None:
    resources = render("overlays/drift-job")
    cronjob = find(resources, "CronJob", "shadowserve-drift")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    spec = job["template"]["spec"]
    drift = container(spec, "drift")
    assert drift["command"] == ["python", "-m", "sidecar.drift"]
    parsed = build_parser().parse_args(drift["args"])  # the drift CLI's own parser
    assert parsed.command == "report" and parsed.fail_on == ["drift"]
    args = dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in drift["args"])
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid" and job["backoffLimit"] == 0
    mount = next(m for m in drift["volumeMounts"] if m["mountPath"] == "/records")
    claim = next(v for v in spec["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    assert find(resources, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    _, sidecar = _sidecar(resources)
    record_dir = next(a for a in sidecar["args"] if a.startswith("--record-dir="))
    assert record_dir.split("=", 1)[1].startswith(args["--current"] + "/"), "the job reads what the sidecars write"
    assert args["--reference"].startswith("/records/") and args["--reference"] != args["--current"]
    # before the report: the segments that killed sidecars left open are finished, with write access
    recover = next(c for c in spec["initContainers"] if c["name"] == "recover")
    assert recover["command"] == drift["command"]
    parsed = build_parser().parse_args(recover["args"])
    assert parsed.command == "recover" and [str(d) for d in parsed.directories] == [args["--current"]]
    recover_mount = next(m for m in recover["volumeMounts"] if m["mountPath"] == "/records")
    assert recover_mount["name"] == mount["name"] and not recover_mount.get("readOnly", False)
    assert mount.get("readOnly") is True, "the report itself only reads"
