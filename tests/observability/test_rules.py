"""The PrometheusRule through promtool: the rules load, and every alert and recording rule does
what its unit tests in k8s/observability/tests/ say (each alert firing and quiet)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.tools import debian_tool

from .prometheus import RULES, rules_file

UNIT_TESTS = RULES.parent / "tests"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([debian_tool("promtool", "prometheus"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_rules_load(tmp_path: Path) -> None:
    done = promtool("check", "rules", str(rules_file(tmp_path)), cwd=tmp_path)
    rules = [r for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]]
    assert done.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout + done.stderr


def test_unit_tests_pass(tmp_path: Path) -> None:
    rules_file(tmp_path)
    tests = sorted(UNIT_TESTS.glob("*.yaml"))
    for test in tests:
        shutil.copy(test, tmp_path)
    done = promtool("test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.count("SUCCESS") == len(tests) == 2


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]
              if "alert" in r}
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in (t for f in UNIT_TESTS.glob("*.yaml") for t in yaml.safe_load(f.read_text())["tests"]):
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == alerts and quiet == alerts, (alerts - firing, alerts - quiet)


def test_every_recording_rule_is_tested() -> None:
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]
                if "record" in r}
    exprs = " ".join(case["expr"] for f in UNIT_TESTS.glob("*.yaml") for t in yaml.safe_load(f.read_text())["tests"]
                     for case in t.get("promql_expr_test", []))
    assert recorded <= set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", exprs))
