"""A real Prometheus for tests: Debian's ``prometheus`` on a free port with a temporary store.

`Prometheus` writes its configuration, starts the server, waits until it is ready and
answers queries through the HTTP API, as Grafana asks them. `scrape_jobs` builds the two
ways an operator scrapes shadowserve: the labels the Prometheus Operator gives a
ServiceMonitor's targets (the relabelling rules docs/observability.md gives, which are the
operator's, applied to the Kubernetes metadata each target would carry) and the documented
bare static config.
`rules_file` turns the PrometheusRule's ``spec`` into a plain rules file for Prometheus and
promtool.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.sidecar.support import free_port
from tests.tools import debian_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "observability" / "prometheusrule.yaml"
DOCS = ROOT / "docs" / "observability.md"
NAMESPACE = "shadowserve-test"
MAX_ANSWER = 16 << 20  # bytes read of one API answer


@dataclass(frozen=True)
class Target:
    """One scraped endpoint and the Kubernetes objects it would belong to."""

    address: str  # host:port of /metrics
    service: str  # the Service the ServiceMonitor selects
    pod: str
    container: str
    port: str  # the Service's port name (the ServiceMonitor's endpoint)
    track: str  # the pod label shadowserve.io/track


def rules_file(directory: Path, name: str = "shadowserve-rules.yaml") -> Path:
    """The PrometheusRule's groups as a rules file (what the operator hands Prometheus)."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    path = directory / name
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


def documented_jobs() -> list[dict[str, Any]]:
    """The scrape jobs docs/observability.md gives operators, in the order it gives them."""
    blocks = re.findall(r"```yaml\n(scrape_configs:\n.*?)```", DOCS.read_text(), re.DOTALL)
    return [job for block in blocks for job in yaml.safe_load(block)["scrape_configs"]]


def discovered(path: Path) -> list[dict[str, Any]]:
    """File-based discovery of the targets `write_targets` puts in ``path``, re-read as it changes.

    The processes' ports are known only once they listen, after Prometheus has started (its
    discovery sends its first targets about 5 s after start, so it starts first, beside them).
    """
    return [{"files": [str(path)], "refresh_interval": "1s"}]


def write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    """Target groups for `discovered`, replaced whole (never read half-written)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(groups))
    temporary.replace(path)


def service_monitor_job(targets_file: Path) -> dict[str, Any]:
    """The documented in-cluster job (what the operator makes of the ServiceMonitor), on `service_monitor_targets`.

    Kubernetes service discovery yields ``__meta_kubernetes_*`` labels and the job's rules
    relabel them: here discovered targets carry the meta labels the endpoints of
    k8s/base/servicemonitor.yaml's Services would, and go through the documented rules
    unchanged (Debian's Prometheus is built without Kubernetes discovery). Labels that start
    with ``__`` are dropped after relabelling.
    """
    job = copy.deepcopy(next(j for j in documented_jobs() if "kubernetes_sd_configs" in j))
    assert job.pop("kubernetes_sd_configs") == [{"role": "endpoints"}]
    return {**job, "file_sd_configs": discovered(targets_file), "scrape_interval": "1s", "scrape_timeout": "1s"}


def service_monitor_targets(targets: list[Target]) -> list[dict[str, Any]]:
    """``targets`` as Kubernetes discovery would see them, and two that the job's keep rules must drop."""
    meta = "__meta_kubernetes_"
    groups: list[dict[str, Any]] = [{"targets": [t.address], "labels": {
        f"{meta}namespace": NAMESPACE, f"{meta}service_name": t.service,
        f"{meta}service_label_app_kubernetes_io_name": "shadowserve",
        f"{meta}service_label_app_kubernetes_io_component": "model",
        f"{meta}pod_name": t.pod, f"{meta}pod_container_name": t.container, f"{meta}endpoint_port_name": t.port,
        f"{meta}pod_label_shadowserve_io_track": t.track}} for t in targets]
    # another app's Service, and the model Service's traffic port
    decoy = {**groups[0]["labels"], f"{meta}service_name": "postgres",
             f"{meta}service_label_app_kubernetes_io_component": "database"}
    port = {**groups[0]["labels"], f"{meta}endpoint_port_name": "http"}
    return groups + [{"targets": [targets[0].address], "labels": labels} for labels in (decoy, port)]


def static_job(targets_file: Path) -> dict[str, Any]:
    """The documented bare static config (job and instance only); its targets from `static_targets`."""
    job = copy.deepcopy(next(j for j in documented_jobs() if "static_configs" in j))
    assert all(set(group) == {"targets"} for group in job.pop("static_configs")), "the bare form has no labels"
    return {**job, "file_sd_configs": discovered(targets_file), "scrape_interval": "1s"}


def static_targets(targets: list[Target]) -> list[dict[str, Any]]:
    """The bare form's one group: addresses, no labels."""
    return [{"targets": [t.address for t in targets]}]


class Prometheus:
    """``prometheus`` scraping ``jobs`` every second and evaluating ``rules`` every second."""

    def __init__(self, directory: Path, jobs: list[dict[str, Any]], rules: Path | None = None) -> None:
        binary = debian_tool("prometheus", "prometheus")
        directory.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": jobs}
        if rules is not None:
            config["rule_files"] = [str(rules)]
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--query.lookback-delta=1m"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, **params: str | list[str]) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a success, an AssertionError with Prometheus' error otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                answer = json.loads(response.read(MAX_ANSWER))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read(MAX_ANSWER) or b"{}")
        assert answer.get("status") == "success", f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}"
        return answer["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """An instant query's vector at ``at`` (Unix seconds)."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def finite(self, expr: str, at: float) -> list[dict[str, Any]]:
        """The series of ``expr`` at ``at`` whose value is a number (NaN is a gap on a graph)."""
        return [s for s in self.query(expr, at) if math.isfinite(float(s["value"][1]))]

    def label_values(self, label: str, match: str | None, start: float, end: float) -> list[str]:
        """What Grafana's ``label_values([match,] label)`` offers, over the dashboard's time range."""
        params: dict[str, str | list[str]] = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
        if match is not None:
            params["match[]"] = [match]
        return list(self.api(f"label/{label}/values", **params))

    def scraped_since(self, moment: float, targets: int) -> bool:
        """Whether all ``targets`` are up and were scraped after ``moment`` (Unix seconds)."""
        stamps = self.query("timestamp(up == 1)", time.time())
        return len(stamps) >= targets and all(float(s["value"][1]) > moment for s in stamps)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
