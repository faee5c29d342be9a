"""The model server's manifests: probes, stop budget, GPU, security, Service, HPA, PDB, ServiceMonitor."""

from __future__ import annotations

from typing import Any

import pytest

from .kube import KUSTOMIZATIONS, container, containers, find, render

MODEL_OVERLAYS = ["base", "overlays/cpu", "overlays/shadow", "overlays/canary", "overlays/drift-job",
                  "overlays/registry", "overlays/registry-poll", "overlays/registry-shadow", "overlays/registry-canary"]
SIDECAR_OVERLAYS = ["overlays/shadow", "overlays/canary", "overlays/drift-job", "overlays/registry-shadow",
                    "overlays/registry-canary"]


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {args}"
    return values[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _pod_specs(resources: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for r in resources:
        spec = r.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            specs.append((f"{r['kind']}/{r['metadata']['name']}", template["spec"]))
    return specs


@pytest.mark.parametrize("path", MODEL_OVERLAYS)
def test_probes_on_the_v2_health_endpoints(path: str) -> None:
    model = container(find(render(path), "Deployment", "shadowserve-model")["spec"]["template"]["spec"], "model")
    assert model["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    startup = model["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading gets at least 5 minutes"


@pytest.mark.parametrize("path", MODEL_OVERLAYS)
def test_stop_budget_covers_pre_stop_and_exit_timeout(path: str) -> None:
    """SIGTERM comes after preStop; serve then drains for --exit-timeout-secs: both fit the grace period."""
    spec = find(render(path), "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    model = container(spec, "model")
    pre_stop = model["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    exit_timeout = float(_flag(model["args"], "exit-timeout-secs"))
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + exit_timeout + 5


def test_gpu_in_base_and_none_in_cpu() -> None:
    base = find(render("base"), "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    resources = container(base, "model")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in base["tolerations"]
    cpu = find(render("overlays/cpu"), "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    model = container(cpu, "model")
    assert "nvidia.com/gpu" not in str(cpu)
    assert _flag(model["args"], "device") == "cpu"


@pytest.mark.parametrize("path", sorted(set(KUSTOMIZATIONS) - {"candidate", "observability"}))
def test_every_container_is_locked_down(path: str) -> None:
    for where, spec in _pod_specs(render(path)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) > 0, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for c in containers(spec):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert context["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            if c["image"].startswith("registry.k8s.io/"):
                continue  # the certificate bootstrap Job: a short-lived upstream tool
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (where, c["name"])
            assert "memory" in c["resources"]["limits"], (where, c["name"])


@pytest.mark.parametrize("path", [*MODEL_OVERLAYS, "injector/cert-manager"])
def test_service_ports_are_named_and_reach_a_container(path: str) -> None:
    """Each Service port has a name and its targetPort names exactly one port of the pods it selects."""
    resources = render(path)
    for service in (r for r in resources if r["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [r["spec"]["template"]["spec"] for r in resources if r["kind"] == "Deployment"
                and _selects(selector, r["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} workloads"
        for port in service["spec"]["ports"]:
            assert port["name"], port
            owners = [c["name"] for c in containers(pods[0]) for p in c.get("ports", [])
                      if p.get("name") == port["targetPort"]]
            assert len(owners) == 1, f"{service['metadata']['name']}:{port['name']} → {owners}"


@pytest.mark.parametrize("path", SIDECAR_OVERLAYS)
def test_service_traffic_goes_through_the_sidecar(path: str) -> None:
    resources = render(path)
    spec = find(resources, "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    named = {p["name"]: c["name"] for c in containers(spec) for p in c.get("ports", [])}
    assert named["http"] == named["grpc"] == named["sidecar-metrics"] == "shadowserve-sidecar"
    assert named["model-http"] == named["model-grpc"] == named["metrics"] == "model"
    candidate = find(resources, "Deployment", "shadowserve-model-candidate")["spec"]["template"]["spec"]
    names = [c["name"] for c in containers(candidate)]
    assert "shadowserve-sidecar" not in names and names[-1] == "model", "the candidate has no sidecar"


def test_hpa_scales_on_queue_depth_with_cpu_fallback() -> None:
    resources = render("base")
    hpa = find(resources, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "shadowserve-model"}
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
    assert kinds["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    model = container(find(resources, "Deployment")["spec"]["template"]["spec"], "model")
    assert "cpu" in model["resources"]["requests"], "CPU utilization needs a CPU request"
    pdb = find(resources, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]


@pytest.mark.parametrize("path", MODEL_OVERLAYS)
def test_pdb_covers_the_primary_only(path: str) -> None:
    resources = render(path)
    selector = find(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    selected = [r["metadata"]["name"] for r in resources
                if r["kind"] == "Deployment" and _selects(selector, r["spec"]["template"]["metadata"]["labels"])]
    assert selected == ["shadowserve-model"]


@pytest.mark.parametrize("path", MODEL_OVERLAYS)
def test_service_monitor(path: str) -> None:
    """It selects every model Service, by labels they carry, on ports they name."""
    resources = render(path)
    monitor = find(resources, "ServiceMonitor")
    services = [r for r in resources if r["kind"] == "Service"]
    assert all(_selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"]) for s in services)
    ports = {p["name"] for p in find(services, "Service", "shadowserve-model")["spec"]["ports"]}
    endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert endpoints <= ports and "metrics" in endpoints
    assert ("sidecar-metrics" in endpoints) == (path in SIDECAR_OVERLAYS)


@pytest.mark.parametrize("path", MODEL_OVERLAYS)
def test_the_repository_api_needs_the_admin_key_from_a_secret(path: str) -> None:
    """Every model container restricts model-repository on HTTP and gRPC, keyed by a Secret's value.

    The variables are parsed as serve parses them; Kubernetes expands $(VAR) only from
    variables defined earlier in the list, so the Secret's variable must come first.
    """
    from serving.access import parse_restrictions

    resources = render(path)
    models = [r for r in resources
              if r["kind"] == "Deployment" and r["metadata"]["name"].startswith("shadowserve-model")]
    assert models
    for deployment in models:
        env = container(deployment["spec"]["template"]["spec"], "model")["env"]
        names = [e["name"] for e in env]
        secret = env[names.index("SHADOWSERVE_ADMIN_KEY")]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "shadowserve-admin", "key": "admin-key"}, "required: no pod with a guessable key"
        for flag in ("SERVING_HTTP_RESTRICTED_API", "SERVING_GRPC_RESTRICTED_PROTOCOL"):
            assert names.index(flag) > names.index("SHADOWSERVE_ADMIN_KEY"), f"{flag} comes after the Secret"
            (restriction,) = parse_restrictions(env[names.index(flag)]["value"])
            assert restriction.groups == {"model-repository"} and restriction.key == "admin-key"
            assert restriction.value == "$(SHADOWSERVE_ADMIN_KEY)", "the value is the Secret's, not a literal"
