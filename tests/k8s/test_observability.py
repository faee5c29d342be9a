"""The Grafana dashboard and the PrometheusRule: well-formed, complete, and on metrics that exist."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from .kube import K8S, find, render

DASHBOARD = K8S / "observability" / "dashboards" / "shadowserve.json"
RULES = K8S / "observability" / "prometheusrule.yaml"
EXTERNAL = {"kube_job_status_failed", "kube_job_status_start_time"}  # kube-state-metrics
METRIC = re.compile(r"\b(?:nv|serving|sidecar|kube)_[a-z0-9_]+\b")
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")  # level:metric:operations


def _names(exposition: str) -> set[str]:
    """Sample names an exposition's families produce, from their TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """What serve and the sidecar export, from their own metrics registries."""
    from prometheus_client import generate_latest

    from serving.gpu import GpuCollector
    from serving.metrics import Metrics, exposition
    from sidecar.app import SidecarMetrics

    serve = Metrics().registry
    serve.register(GpuCollector(None, []))  # registered only where a GPU is; its families, without GPUs
    return _names(exposition(serve).decode()) | _names(generate_latest(SidecarMetrics().registry).decode())


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs() -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in _dashboard()["panels"] if p["type"] != "row"}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["spec"]["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _expressions() -> list[str]:
    variables = [v["query"]["query"] for v in _dashboard()["templating"]["list"] if isinstance(v["query"], dict)]
    return [e for exprs in _panel_exprs().values() for e in exprs] + [r["expr"] for r in _rules()] + variables


def test_every_metric_is_exported(exported: set[str]) -> None:
    used = {name for expr in _expressions() for name in METRIC.findall(RECORDED.sub("", expr))}
    assert used - exported - EXTERNAL == set()
    recorded = {name for expr in _expressions() for name in RECORDED.findall(expr)}
    assert recorded <= _recorded(), recorded - _recorded()
    assert {"sidecar_canary_weight", "sidecar_live_drift_psi"} <= used & exported


def test_expressions_are_balanced_and_rates_have_ranges() -> None:
    for expr in _expressions():
        stack = []
        for char in re.sub(r'"[^"]*"', '""', expr):
            if char in "([{":
                stack.append(char)
            elif char in ")]}":
                assert stack and "([{"[")]}".index(char)] == stack.pop(), expr
        assert not stack, expr
        for call in re.finditer(r"\b(rate|increase)\((\w+)(\{[^}]*\})?", expr):
            assert expr[call.end()] == "[", f"{call.group(0)} needs a range: {expr}"
        assert METRIC.search(expr), expr


def test_dashboard_covers_the_issue() -> None:
    exprs = " ".join(e for es in _panel_exprs().values() for e in es)
    latency = [e for es in _panel_exprs().values() for e in es if "serving_request_duration_seconds_bucket" in e]
    quantiles = {match.group(1) for e in latency if (match := re.search(r"histogram_quantile\(([\d.]+)", e))}
    assert quantiles == {"0.5", "0.95", "0.99"}
    for needed in ("nv_inference_pending_request_count", "serving_batch_size_bucket", "sidecar_canary_weight",
                   "sidecar_shadow_top1_agree_rows:rate5m", "sidecar_live_drift_psi", "sidecar_shadow_dropped_total",
                   "by (shadowserve_io_track, version)"):
        assert needed in exprs, needed
    distribution = next(p for p in _dashboard()["panels"] if p["title"].startswith("Prediction distribution"))
    assert distribution["repeat"] == "version" and 'version="$version"' in distribution["targets"][0]["expr"]
    assert "by (version, class)" in exprs


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval", "__interval", "__range",
                                                                      "__all"}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(panels) + json.dumps(dashboard["templating"])))
    assert used <= defined, used - defined
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels if "targets" in p)


def test_dashboard_config_map() -> None:
    config_map = find(render("observability"), "ConfigMap", "shadowserve-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["shadowserve.json"]) == _dashboard()


def test_alerts() -> None:
    rules = {rule["alert"]: rule for rule in _alerts()}
    assert len(rules) == len(_alerts()) == 7, "alert names are unique"
    assert len(_recorded()) == len(_rules()) - len(_alerts()), "recorded names are unique"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "nv_inference_request_failure" in rules["ShadowserveHighErrorRate"]["expr"]
    assert "histogram_quantile(0.99" in rules["ShadowserveHighP99Latency"]["expr"]
    assert "sidecar_live_drift_psi" in rules["ShadowserveLiveDrift"]["expr"]
    assert "sidecar_shadow_dropped_total" in rules["ShadowserveShadowDrops"]["expr"]
    cronjob = find(render("overlays/drift-job"), "CronJob")["metadata"]["name"]
    assert f'job_name=~"{cronjob}-.*"' in rules["ShadowserveDriftJobFailed"]["expr"], "Jobs are named <cronjob>-<n>"
    rendered = find(render("observability"), "PrometheusRule")
    assert rendered["spec"] == yaml.safe_load(RULES.read_text())["spec"]


def test_dashboard_fixes_of_issue_16() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    namespace = variables["namespace"]
    assert namespace["includeAll"] and namespace["allValue"] == ".*" and namespace["current"]["value"] == "$__all"
    exprs = _panel_exprs()
    everything = [e for es in exprs.values() for e in es] + [v["query"]["query"] for v in variables.values()
                                                             if isinstance(v["query"], dict)]
    assert all('namespace="$namespace"' not in e for e in everything), "an All value needs =~"
    heatmap = next(es for title, es in exprs.items() if title.startswith("Prediction distribution"))
    assert "[$__rate_interval]" in heatmap[0] and "$__interval" not in heatmap[0]
    assert exprs["Requests per second"] == [
        'sum by (shadowserve_io_track, version) (rate(nv_inference_request_success{namespace=~"$namespace", '
        'model="$model"}[$__rate_interval]))']
    for title, es in exprs.items():
        for expr in es:
            if "sidecar_" in expr:
                assert 'model="$model"' in expr, f"{title} ignores $model"
