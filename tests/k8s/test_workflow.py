"""The deploy-model workflow example points at what exists: overlays, names, commands and keys."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from sidecar.drift.cli import build_parser

from .kube import K8S, ROOT, find, render

WORKFLOW = ROOT / ".github" / "workflows" / "deploy-model.yml"


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _script(job: str) -> str:
    return "\n".join(step.get("run", "") for step in _workflow()["jobs"][job]["steps"])


def test_triggers_and_order() -> None:
    workflow = _workflow()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["repository_dispatch"]["types"] == ["model-promoted"] and "workflow_dispatch" in triggers
    assert workflow["jobs"]["canary"]["needs"] == "evaluate", "no canary before the offline evaluation passes"


def test_evaluation_compares_the_shadow_recorded_by_the_overlay() -> None:
    script = _script("evaluate")
    command = re.search(r"python -m sidecar\.drift compare (.*)", script)
    assert command, script
    flags = dict(re.findall(r"--([\w-]+) (\S+)", command.group(1)))
    parsed = build_parser().parse_args(["compare", *command.group(1).split()])  # the drift CLI's own parser
    assert parsed.fail_on == ["disagreement"] and parsed.shadow == flags["shadow"]
    shadows = yaml.safe_load(find(render("overlays/shadow"), "ConfigMap")["data"]["sidecar.yaml"])["shadows"]
    assert flags["shadow"] in {shadow["name"] for shadow in shadows}
    sidecar = next(c for c in find(render("overlays/shadow"), "Deployment", "shadowserve-model")["spec"]["template"]
                   ["spec"]["initContainers"] if c["name"] == "shadowserve-sidecar")
    assert f"-c {sidecar['name']}" in script
    assert any(a == f"--record-dir={flags['records']}/$(POD_NAME)" for a in sidecar["args"])


def test_canary_step_edits_the_one_place() -> None:
    script = _script("canary")
    steps = _workflow()["jobs"]["canary"]["steps"]
    edit = next(s for s in steps if "yq" in s.get("run", ""))
    overlay = ROOT / edit["working-directory"]
    assert overlay == K8S / "overlays" / "canary"
    assert re.search(r"yq -i \"\.canary\.weight = \$\{CANARY_WEIGHT\}\" sidecar\.yaml", edit["run"])
    assert "weight" in yaml.safe_load((overlay / "sidecar.yaml").read_text())["canary"]
    image = re.search(r"kustomize edit set image \"([\w-]+)=", edit["run"])
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert image and image.group(1) in {entry["name"] for entry in kustomization["images"]}
    assert "kubectl apply -k k8s/overlays/canary" in script


def test_untrusted_inputs_are_checked_and_secrets_not_inlined() -> None:
    text = WORKFLOW.read_text()
    assert "${{ secrets." not in "\n".join(line for line in text.splitlines() if "printf" in line or "echo" in line)
    check = next(s["run"] for s in _workflow()["jobs"]["evaluate"]["steps"] if s.get("name") == "Check the inputs")
    assert "CANDIDATE_TAG" in check and "CANARY_WEIGHT" in check
    for job in ("evaluate", "canary"):
        assert "${{ github.event" not in _script(job), "payload values reach scripts only through env"


@pytest.mark.parametrize(("tag", "weight", "ok"), [("0.2.0", "10", True), ("0.2.0", "101", False),
                                                  ("x;rm -rf /", "10", False), ("0.2.0", "1e3", False)])
def test_input_check_runs(tag: str, weight: str, ok: bool) -> None:
    check = next(s["run"] for s in _workflow()["jobs"]["evaluate"]["steps"] if s.get("name") == "Check the inputs")
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", check],
                            env={"CANDIDATE_TAG": tag, "CANARY_WEIGHT": weight}, timeout=10, check=False)
    assert (result.returncode == 0) == ok
