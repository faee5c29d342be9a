"""The deploy-model workflow example points at what exists: triggers, overlays, names, commands, flags and keys.

Every `shadowserve-registry` and `shadowserve-drift` command in it is parsed by that program's own
parser; its jq gates are run on documents the registry's own rules accept or refuse.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from model_registry.audit import AuditEntry
from model_registry.cli import build_parser as registry_parser
from model_registry.errors import EvidenceRefused
from model_registry.evidence import REPORT_FORMAT, VERDICT_FORMAT, judge
from model_registry.pull import PULLED
from sidecar.config import settings as sidecar_settings
from sidecar.drift.cli import build_parser as drift_parser

from .kube import K8S, KUSTOMIZATIONS, ROOT, container, find, render

WORKFLOW = ROOT / ".github" / "workflows" / "deploy-model.yml"
# What the scripts' variables hold when they run (from env:, GitHub's defaults or an earlier step).
SAMPLES = {"NAMESPACE": "models", "MODEL_NAME": "classifier", "VERSION": "3", "challenger": "3",
           "SINCE": "2026-12-01T00:00:00Z", "GITHUB_ACTOR": "octocat", "GITHUB_RUN_ID": "42", "POD": "pod-1",
           "pod": "pod-1", "CANARY_WEIGHT": "10", "SHADOW_MINUTES": "30"}


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _script(job: str | None = None) -> str:
    """The run scripts of one job (or of all), continuation lines joined."""
    jobs = _workflow()["jobs"]
    text = "\n".join(step.get("run", "") for name in ([job] if job else jobs) for step in jobs[name]["steps"])
    return re.sub(r"\s*\\\n\s*", " ", text)


def _expand(word: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in SAMPLES, f"${name} is not set anywhere the workflow sets variables"
        return SAMPLES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, word)


def _commands(program: str, job: str | None = None) -> list[list[str]]:
    """Each invocation of ``program``: its arguments, up to a pipe, redirection or the end of a $(...)."""
    found = []
    for line in _script(job).splitlines():
        for match in re.finditer(rf"(?:^|[\s\"]){re.escape(program)} (.*)", line):
            rest = re.split(r"\s(?:\|\|?|>|;)\s|\s\|\|\s|\)$|\s\|\|", match.group(1))[0]
            found.append([_expand(word) for word in shlex.split(rest)])
    return found


def _names(kind: str) -> set[str]:
    return {r["metadata"]["name"] for r in render("overlays/registry-shadow") if r["kind"] == kind}


def test_triggers_and_order() -> None:
    workflow = _workflow()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["repository_dispatch"]["types"] == ["model-version-alias-created"]
    assert triggers["schedule"] and "workflow_dispatch" in triggers
    jobs = workflow["jobs"]
    assert jobs["evaluate"]["needs"] == "watch" and "needs.watch.outputs.version" in jobs["evaluate"]["if"]
    assert "evaluate" in jobs["canary"]["needs"], "no canary before the offline evaluation passes"
    steps = [step.get("name", "") for step in jobs["canary"]["steps"]]
    assert steps.index("Apply the canary") < steps.index("Wait for the canary's verdict") \
        < steps.index("Promote to @champion") < steps.index("Serve the new champion")


def test_the_webhook_payload_is_mlflows() -> None:
    """The event exists in MLflow, and the dispatch's client_payload is read by its payload's own keys."""
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.webhooks.types import ModelVersionAliasCreatedPayload

    assert str(WebhookEvent.from_str("model_version_alias.created")) == "model_version_alias.created"
    used = set(re.findall(r"github\.event\.client_payload\.(\w+)", WORKFLOW.read_text()))
    assert used == set(ModelVersionAliasCreatedPayload.__annotations__) == {"name", "alias", "version"}


def test_registry_commands_parse() -> None:
    """Each `shadowserve-registry` command is one the CLI accepts, with the promotion gated on evidence."""
    commands = _commands("shadowserve-registry")
    parsed = [registry_parser().parse_args(words) for words in commands]
    assert {args.command for args in parsed} == {"resolve", "history", "promote"}
    assert {args.uri for args in parsed if args.command == "resolve"} == {"models:/classifier@challenger",
                                                                         "models:/classifier@champion"}
    assert all(args.json for args in parsed if args.command == "history")
    (promote,) = (args for args in parsed if args.command == "promote")
    assert (promote.name, promote.to, promote.version) == ("classifier", "champion", "3")
    assert promote.actor == "github:octocat" and str(promote.evidence) == "/tmp/verdict.json"
    assert "kubectl -n \"$NAMESPACE\" cp verdict.json \"$POD:/tmp/verdict.json\" -c shadowserve-sidecar" \
        in _script("canary")


def test_evaluation_compares_the_shadow_recorded_by_the_overlay() -> None:
    (words,) = _commands("shadowserve-drift", "evaluate")
    parsed = drift_parser().parse_args(words)  # the drift CLI's own parser
    assert parsed.command == "compare" and parsed.fail_on == ["disagreement"]
    assert str(parsed.json) == "/tmp/compare.json" and parsed.since is not None
    resources = render("overlays/registry-shadow")
    shadows = yaml.safe_load(find(resources, "ConfigMap", "shadowserve-sidecar-config")["data"]["sidecar.yaml"])
    assert parsed.shadow in {shadow["name"] for shadow in shadows["shadows"]}
    primary = find(resources, "Deployment", "shadowserve-model")
    sidecar = container(primary["spec"]["template"]["spec"], "shadowserve-sidecar")
    assert f"--record-dir={parsed.records}/$(POD_NAME)" in sidecar["args"]


def test_pods_deployments_containers_and_overlays_exist() -> None:
    script = _script()
    for selector in re.findall(r"get pod -l (\S+)", script):
        labels = dict(pair.split("=") for pair in selector.split(","))
        primary = find(render("overlays/registry-shadow"), "Deployment", "shadowserve-model")
        assert labels.items() <= primary["spec"]["template"]["metadata"]["labels"].items(), selector
    for deployment in re.findall(r"deploy/([\w-]+)", script):
        assert deployment in _names("Deployment"), deployment
    specs = {r["metadata"]["name"]: r["spec"]["template"]["spec"] for r in render("overlays/registry-shadow")
             if r["kind"] == "Deployment"}
    for target, name in re.findall(r"exec (\S+) -c ([\w-]+)", script):
        deployment = target.removeprefix("deploy/") if target.startswith("deploy/") else "shadowserve-model"
        container(specs[deployment], name)
    overlays = re.findall(r"kubectl apply -k (\S+)", script)
    assert set(overlays) == {"k8s/overlays/registry-shadow", "k8s/overlays/registry-canary"}
    assert all(path.removeprefix("k8s/") in KUSTOMIZATIONS for path in overlays)


def test_the_candidate_check_reads_the_pull_record() -> None:
    script = _script("evaluate")
    assert f'open("/models/{PULLED}")' in script
    spec = find(render("overlays/registry-shadow"), "Deployment", "shadowserve-model-candidate")["spec"]["template"]
    assert "$(SHADOWSERVE_MODEL_URI)" in container(spec["spec"], "pull-model")["args"]
    assert "--dest" in container(spec["spec"], "pull-model")["args"]


def test_the_verdict_comes_from_the_sidecars_admin_port() -> None:
    (url,) = re.findall(r"urlopen\(\"(http://[^\"]+)\"", _script("canary"))
    spec = find(render("overlays/registry-canary"), "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    settings = sidecar_settings.parse(container(spec, "shadowserve-sidecar")["args"], environ={})
    assert settings.admin_listen is not None
    assert url == f"http://{settings.admin_listen.host}:{settings.admin_listen.port}/sidecar/canary/verdict"


def test_canary_step_edits_the_one_place() -> None:
    steps = _workflow()["jobs"]["canary"]["steps"]
    edit = next(s for s in steps if "yq" in s.get("run", ""))
    overlay = ROOT / edit["working-directory"]
    assert overlay == K8S / "overlays" / "registry-canary"
    assert re.search(r"yq -i \"\.canary\.weight = \$\{CANARY_WEIGHT\}\" sidecar\.yaml", edit["run"])
    assert "weight" in yaml.safe_load((overlay / "sidecar.yaml").read_text())["canary"]


def test_untrusted_inputs_are_checked_and_secrets_not_inlined() -> None:
    text = WORKFLOW.read_text()
    assert "${{ secrets." not in "\n".join(line for line in text.splitlines() if "printf" in line or "echo" in line)
    check = next(s["run"] for s in _workflow()["jobs"]["watch"]["steps"] if s.get("name") == "Check the inputs")
    for variable in ("MODEL_NAME", "MODEL_ALIAS", "EXPECTED_VERSION", "CANARY_WEIGHT"):
        assert variable in check
    for job in _workflow()["jobs"]:
        assert "${{ github.event" not in _script(job), "payload values reach scripts only through env"


@pytest.mark.parametrize(("inputs", "ok"), [
    ({}, True), ({"EXPECTED_VERSION": ""}, True), ({"CANARY_WEIGHT": "101"}, False),
    ({"MODEL_NAME": "x;rm -rf /"}, False), ({"MODEL_ALIAS": "$(id)"}, False), ({"EXPECTED_VERSION": "1e3"}, False),
    ({"EXPECTED_VERSION": "0"}, False), ({"CANARY_WEIGHT": "1e3"}, False),
])
def test_input_check_runs(inputs: dict[str, str], ok: bool) -> None:
    check = next(s["run"] for s in _workflow()["jobs"]["watch"]["steps"] if s.get("name") == "Check the inputs")
    env = {"MODEL_NAME": "classifier", "MODEL_ALIAS": "challenger", "EXPECTED_VERSION": "3", "CANARY_WEIGHT": "10",
           **inputs}
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", check], env=env, timeout=10, check=False)
    assert (result.returncode == 0) == ok


def _gate(fragment: str, document: str) -> bool:
    """Run the workflow's jq gate whose filter contains ``fragment`` on ``document``."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq not found (GitHub's runners have it)")
    (match,) = [m for m in re.finditer(r"jq -e ((?:-s )?(?:--arg(?:json)? \w+ \"[^\"]+\" )*)'([^']+)'", _script())
                if fragment in m.group(2)]
    args = [_expand(word) for word in shlex.split(match.group(1))]
    result = subprocess.run([jq, "-e", *args, match.group(2)], input=document, capture_output=True, text=True,
                            timeout=10, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def _accepted(document: dict[str, Any]) -> bool:
    try:
        judge(document, "classifier", 3)
    except EvidenceRefused:
        return False
    return True


COMPARE = {"format": REPORT_FORMAT, "kind": "compare", "status": "pass", "counts": {"paired_predictions": 120},
           "judged": {"model": "classifier", "version": "3"}}
VERDICT = {"format": VERDICT_FORMAT, "model": "classifier", "version": "3", "phase": "ready", "passed": True}


@pytest.mark.parametrize(("fragment", "document"), [
    (".judged.model", COMPARE), (".judged.model", {**COMPARE, "status": "fail"}),
    (".judged.model", {**COMPARE, "judged": {"model": "classifier", "version": None, "versions": {"2": 5, "3": 5}}}),
    (".judged.model", {**COMPARE, "judged": {"model": "classifier", "version": "2"}}),
    (".judged.model", {**COMPARE, "counts": {"paired_predictions": 0}}),
    (".passed == true", VERDICT), (".passed == true", {**VERDICT, "version": 3}),
    (".passed == true", {**VERDICT, "version": "4"}), (".passed == true", {**VERDICT, "passed": False}),
    (".passed == true", {**VERDICT, "model": "other"}),
])
def test_evidence_gates_agree_with_the_registry(fragment: str, document: dict[str, Any]) -> None:
    """The workflow stops before the canary, or before promote, exactly when the registry would refuse."""
    assert _gate(fragment, json.dumps(document)) == _accepted(document)


@pytest.mark.parametrize(("entries", "judged"), [
    ([("register", 3), ("alias", 3)], False), ([("promote", 3)], True), ([("refused", 3)], True),
    ([("rollback", 3)], True), ([("ramp", 3), ("promote", 2)], False), ([], False),
])
def test_the_poll_skips_a_judged_version(entries: list[tuple[str, int]], judged: bool) -> None:
    """On `shadowserve-registry history --json` lines as the registry writes them."""
    lines = "".join(json.dumps(AuditEntry.now(action, actor="t", version=v).to_json()) + "\n" for action, v in entries)
    assert _gate("any(.[]", lines) == judged
