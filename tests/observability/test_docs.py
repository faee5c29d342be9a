"""The scrape configs docs/observability.md gives operators are valid Prometheus configuration.

The in-cluster one (Kubernetes discovery, which Debian's Prometheus is built without) is run,
its discovery swapped for static targets with the same metadata, by test_dashboard.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.tools import debian_tool

from .prometheus import (
    Target,
    documented_jobs,
    service_monitor_job,
    service_monitor_targets,
    static_job,
    static_targets,
    write_targets,
)


def test_documented_scrape_configs_are_valid(tmp_path: Path) -> None:
    jobs = documented_jobs()
    assert [("kubernetes_sd_configs" in job, "static_configs" in job) for job in jobs] == [
        (True, False), (False, True), (False, True)]
    target = [Target("127.0.0.1:8002", "shadowserve-model", "pod-a", "model", "metrics", "primary")]
    write_targets(tmp_path / "sm.json", service_monitor_targets(target))
    write_targets(tmp_path / "static.json", static_targets(target))
    tested = [service_monitor_job(tmp_path / "sm.json"), static_job(tmp_path / "static.json")]
    for index, job in enumerate([*tested, *jobs[1:]]):
        path = tmp_path / f"prometheus-{index}.yml"
        path.write_text(yaml.safe_dump({"scrape_configs": [job]}))
        done = subprocess.run([debian_tool("promtool", "prometheus"), "check", "config", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, job["job_name"] + ": " + done.stdout + done.stderr


def test_the_track_label_is_the_operators_name_for_the_pod_label() -> None:
    relabel = next(job for job in documented_jobs() if "kubernetes_sd_configs" in job)["relabel_configs"]
    track = [rule for rule in relabel if rule.get("target_label") == "shadowserve_io_track"]
    # the operator's sanitizeLabelName: every character outside [a-zA-Z0-9_] becomes "_"
    assert track == [{"source_labels": ["__meta_kubernetes_pod_label_shadowserve_io_track"], "regex": "(.+)",
                      "target_label": "shadowserve_io_track"}]
