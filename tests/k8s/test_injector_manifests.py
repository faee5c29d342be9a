"""The injector's manifests: webhook configuration, Deployment flags, and both certificate options."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.injector import settings as injector_settings

from .kube import container, find, render

VARIANTS = ["injector/cert-manager", "injector/self-signed"]


def _injector(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], injector_settings.Settings]:
    spec = find(resources, "Deployment", "shadowserve-injector")["spec"]["template"]["spec"]
    injector = container(spec, "injector")
    env = {e["name"]: e["value"] for e in injector["env"] if "value" in e}
    return spec, injector, injector_settings.parse(injector["args"], environ=env)


@pytest.mark.parametrize("path", VARIANTS)
def test_webhook_configuration(path: str) -> None:
    resources = render(path)
    webhook, = find(resources, "MutatingWebhookConfiguration", "shadowserve-injector")["webhooks"]
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert 1 <= webhook["timeoutSeconds"] <= 10
    assert webhook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"], "scope": "Namespaced"}]
    excluded = next(e for e in webhook["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "kubernetes.io/metadata.name")
    namespace = find(resources, "Namespace")["metadata"]["name"]
    assert excluded["operator"] == "NotIn" and {"kube-system", namespace} <= set(excluded["values"])
    assert webhook["objectSelector"]["matchExpressions"] == [
        {"key": "shadowserve.io/inject", "operator": "NotIn", "values": ["false"]}]
    ref = webhook["clientConfig"]["service"]
    assert ref["path"] == "/mutate"
    service = find(resources, "Service", ref["name"])
    assert service["metadata"]["namespace"] == ref["namespace"] == namespace
    port = next(p for p in service["spec"]["ports"] if p["port"] == ref["port"])
    _, injector, settings = _injector(resources)
    assert {p["name"]: p["containerPort"] for p in injector["ports"]}[port["targetPort"]] == settings.port


@pytest.mark.parametrize("path", VARIANTS)
def test_injector_flags(path: str) -> None:
    resources = render(path)
    spec, injector, settings = _injector(resources)
    assert injector["command"] == ["python", "-m", "sidecar.injector"]
    assert settings.sidecar_image == injector["image"], "the injected sidecar is the injector's own image"
    assert settings.on_error == "allow" and settings.native_sidecars == "auto"
    assert "$(POD_NAMESPACE)" in settings.exclude_namespaces and "kube-system" in settings.exclude_namespaces
    mount = next(m for m in injector["volumeMounts"] if str(settings.tls_cert).startswith(m["mountPath"] + "/"))
    assert str(settings.tls_key).startswith(mount["mountPath"] + "/")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "shadowserve-injector-tls"
    for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert injector[probe]["httpGet"] == {"path": path_, "port": "https", "scheme": "HTTPS"}


def test_cert_manager_wiring() -> None:
    resources = render("injector/cert-manager")
    webhook = find(resources, "MutatingWebhookConfiguration")
    namespace, name = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certificate = find(resources, "Certificate", name)
    assert certificate["metadata"]["namespace"] == namespace
    ref = webhook["webhooks"][0]["clientConfig"]["service"]
    assert f"{ref['name']}.{ref['namespace']}.svc" in certificate["spec"]["dnsNames"]
    issuer = certificate["spec"]["issuerRef"]
    assert find(resources, issuer["kind"], issuer["name"])["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["secretName"] == "shadowserve-injector-tls"
    hours = {key: int(certificate["spec"][key].removesuffix("h")) for key in ("duration", "renewBefore")}
    assert 0 < hours["renewBefore"] < hours["duration"]
    spec, _, _ = _injector(resources)
    assert "items" not in next(v for v in spec["volumes"] if "secret" in v)["secret"], "tls.crt and tls.key as named"


def test_self_signed_bootstrap_wiring() -> None:
    resources = render("injector/self-signed")
    assert not [r for r in resources if r["apiVersion"].startswith("cert-manager.io/")]
    webhook = find(resources, "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in webhook["metadata"].get("annotations", {})
    ref = webhook["webhooks"][0]["clientConfig"]["service"]
    job = find(resources, "Job", "shadowserve-injector-certgen")["spec"]["template"]["spec"]

    def flags(name: str) -> dict[str, str]:
        step = container(job, name)
        return dict(arg.split("=", 1) for arg in step["args"][1:])

    create, patch = flags("create"), flags("patch")
    assert f"{ref['name']}.{ref['namespace']}.svc" in create["--host"].split(",")
    assert create["--secret-name"] == patch["--secret-name"] == "shadowserve-injector-tls"
    assert patch["--webhook-name"] == webhook["metadata"]["name"] and patch["--patch-mutating"] == "true"
    rules = find(resources, "ClusterRole")["rules"]
    assert rules[0]["resourceNames"] == [webhook["metadata"]["name"]]
    assert {"get", "create"} <= set(find(resources, "Role")["rules"][0]["verbs"])
    spec, _, settings = _injector(resources)
    items = next(v for v in spec["volumes"] if "secret" in v)["secret"]["items"]
    assert {i["path"] for i in items} == {settings.tls_cert.name, settings.tls_key.name}
