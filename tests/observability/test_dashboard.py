"""Every panel query and template variable of the Grafana dashboard, through a real Prometheus.

Two Prometheus servers scrape the same running serve x3 + sidecar (tests/observability/stack.py)
every second, under traffic: one with the labels the ServiceMonitor gives the series in the
cluster (namespace, service, pod, container, endpoint, job, shadowserve_io_track), one with a
bare static config (job and instance only). Both load the PrometheusRule's rules, so the
recorded series the dashboard reads exist. Then each variable's ``label_values`` and each
panel's query, with the variables substituted as Grafana substitutes them, is evaluated
through the HTTP API at the end of the traffic: it must parse and return a number.

GPU-only series: the GPU row's panels (`GPU_ONLY`) read serve's NVML series, which exist only
where serve sees a GPU. On a machine without one their queries are still evaluated (they must
parse) but may return nothing; with a GPU they must return data like the rest.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from .prometheus import (
    NAMESPACE,
    Prometheus,
    rules_file,
    service_monitor_job,
    service_monitor_targets,
    static_job,
    static_targets,
    write_targets,
)
from .stack import CANARY_WEIGHT, PRIMARY_POD, SHADOW, Stack

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "observability" / "dashboards" / "shadowserve.json"
SCRAPE = 1.0  # seconds; the Grafana data source's "scrape interval" setting
INTERVAL = "1s"  # $__interval: the time range over the graph's width, never under the scrape interval
RATE_INTERVAL = f"{int(max(1 + SCRAPE, 4 * SCRAPE))}s"  # Grafana: max($__interval + scrape, 4 x scrape)
GPU_ONLY = {"GPU utilization", "GPU memory"}  # panels whose series exist only with a GPU
TRAFFIC_SECS = 3.0
MODEL = "classifier"


@dataclass
class Scraped:
    """A Prometheus, and the time to evaluate at (the end of the traffic)."""

    prometheus: Prometheus
    start: float
    quiet: float  # scraped, before any traffic
    at: float
    namespaces: list[str]  # what $namespace may be besides All


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scraped]]:
    root = tmp_path_factory.mktemp("observability")
    stack = Stack(root / "stack")
    servers: dict[str, Prometheus] = {}
    try:
        rules = rules_file(root)
        found = {"servicemonitor": root / "sm-targets.json", "static": root / "static-targets.json"}
        for path in found.values():
            write_targets(path, [])
        servers = {"servicemonitor": Prometheus(root / "sm", [service_monitor_job(found["servicemonitor"])], rules),
                   "static": Prometheus(root / "static", [static_job(found["static"])], rules)}
        for server in servers.values():
            server.wait_ready()
        stack.wait_ready()
        targets = stack.targets()
        write_targets(found["servicemonitor"], service_monitor_targets(targets))
        write_targets(found["static"], static_targets(targets))
        start = time.time()
        wait(lambda: all(s.scraped_since(start, len(targets)) for s in servers.values()), "a first scrape")
        quiet = time.time()
        tally = stack.traffic(TRAFFIC_SECS)
        end = time.time()
        assert not tally.failures and sum(tally.ok.values()) > 50, (tally.failures[:3], tally.ok)
        # the last scrape after the traffic holds every counter; the live drift gauges refresh each second
        wait(lambda: all(s.scraped_since(end + 1.0, len(targets)) for s in servers.values()), "a scrape after it")
        at = end + 0.5  # the rate windows ($__rate_interval: 4 s) still cover the traffic's last scrapes
        yield {"servicemonitor": Scraped(servers["servicemonitor"], start, quiet, at, [NAMESPACE]),
               "static": Scraped(servers["static"], start, quiet, at, [])}
    finally:
        threads = [threading.Thread(target=s.stop) for s in servers.values()]
        for thread in threads:
            thread.start()
        statuses = stack.stop()
        for thread in threads:
            thread.join()
    assert all(status == 0 for status in statuses.values()), statuses


def wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's interpolation: $name and ${name}, the built-in intervals included."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": INTERVAL, **values}
    for name in sorted(values, key=len, reverse=True):  # $__rate_interval before $__interval
        text = text.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in text, f"a variable is left in {text}"
    return text


def label_values(scraped: Scraped, query: str) -> list[str]:
    """Grafana's ``label_values(label)`` and ``label_values(selector, label)``, over the time range."""
    match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query)
    assert match, f"not a label_values() query: {query}"
    return scraped.prometheus.label_values(match.group(2), match.group(1), scraped.start - 60, scraped.at)


def choices(scraped: Scraped) -> list[dict[str, str]]:
    """Every $namespace the dashboard offers (All first, as .*), with the model the test serves."""
    return [{"namespace": namespace, "model": MODEL} for namespace in [".*", *scraped.namespaces]]


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p.get("targets")]


@pytest.mark.parametrize("labels", ["servicemonitor", "static"])
def test_every_variable_offers_values(scraped: dict[str, Scraped], labels: str) -> None:
    here = scraped[labels]
    found = variables()
    assert found["datasource"]["type"] == "datasource"  # Grafana's own list of data sources, not a query
    namespace = found["namespace"]
    assert namespace["includeAll"] and namespace["allValue"] == ".*"
    # Under the ServiceMonitor every series has its namespace; under a static config none
    # has, and All (.*, which also matches an empty label) is the only choice, and works.
    assert label_values(here, namespace["query"]["query"]) == here.namespaces
    for values in choices(here):
        models = label_values(here, substitute(found["model"]["query"]["query"], values))
        assert models == [MODEL], (values, models)
        versions = label_values(here, substitute(found["version"]["query"]["query"], values))
        assert versions == ["1", "2"], (values, versions)


@pytest.mark.parametrize("labels", ["servicemonitor", "static"])
def test_every_panel_query_returns_data(scraped: dict[str, Scraped], labels: str) -> None:
    here = scraped[labels]
    versions = label_values(here, substitute(variables()["version"]["query"]["query"], {"namespace": ".*",
                                                                                           "model": MODEL}))
    empty = []
    evaluated = 0
    gpu = torch.cuda.is_available()
    for panel in panels():
        repeated = [{"version": v} for v in versions] if panel.get("repeat") == "version" else [{}]
        for values in choices(here):
            for repeat in repeated:
                for target in panel["targets"]:
                    expr = substitute(target["expr"], {**values, **repeat})
                    evaluated += 1
                    found = here.prometheus.finite(expr, here.at)  # raises on a query that does not parse
                    if not found and (gpu or panel["title"] not in GPU_ONLY):
                        empty.append(f"{panel['title']} ({values}, {repeat}): {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)
    assert evaluated >= 19 * len(choices(here))


def test_the_series_behind_the_issue(scraped: dict[str, Scraped]) -> None:
    here = scraped["servicemonitor"]
    prometheus, at = here.prometheus, here.at
    values = {"namespace": NAMESPACE, "model": MODEL, "version": "1"}
    exprs = {p["title"]: [substitute(t["expr"], values) for t in p["targets"]] for p in panels()}
    # requests by track: the primary's v1 apart from the candidate's v2 (shadow copies and canary)
    tracks = {(s["metric"]["shadowserve_io_track"], s["metric"]["version"]) for s in
              prometheus.finite(exprs["Requests per second"][0], at)}
    assert tracks == {("primary", "1"), ("candidate", "2")}
    # before its first drop (before any traffic) a shadow's drop counter is there, at 0, so its
    # rate reads 0 rather than No data (under traffic on a busy machine it may really drop)
    drops = prometheus.query("sidecar_shadow_dropped_total", here.quiet)
    assert [(s["metric"]["shadow"], s["metric"]["pod"], s["value"][1]) for s in drops] == [(SHADOW, PRIMARY_POD, "0")]
    assert [s["metric"]["shadow"] for s in prometheus.finite(exprs["Shadow drops"][0], at)] == [SHADOW]
    # the sidecar panels follow $model: another model's selection shows nothing
    other = {"namespace": NAMESPACE, "model": "sentiment"}
    for title in ("Shadow drops", "Canary weight", "Shadow agreement (top-1)", "Live drift (PSI)"):
        expr = next(p for p in panels() if p["title"] == title)["targets"][0]["expr"]
        assert prometheus.finite(substitute(expr, other), at) == [], title
    weight = prometheus.finite(exprs["Canary weight"][0], at)
    assert [float(s["value"][1]) for s in weight] == [CANARY_WEIGHT]
    # live drift against the primary's own answers: every upstream's top-1 column has a PSI
    drift = {s["metric"]["upstream"] for s in prometheus.finite(exprs["Live drift (PSI)"][0], at)
             if s["metric"]["output"].endswith(".top1")}
    assert {"primary", SHADOW} <= drift
    agreement = prometheus.finite(exprs["Shadow agreement (top-1)"][0], at)
    assert len(agreement) == 1 and 0.3 < float(agreement[0]["value"][1]) <= 1.0
    # the ServiceMonitor's labels, as the operator writes them; only the metrics ports of model Services
    up = {(s["metric"]["job"], s["metric"]["endpoint"], s["metric"]["shadowserve_io_track"])
          for s in prometheus.query("up", at)}
    assert up == {("shadowserve-model", "metrics", "primary"), ("shadowserve-model", "sidecar-metrics", "primary"),
                  ("shadowserve-model-candidate", "metrics", "candidate")}
