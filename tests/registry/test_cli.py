"""``shadowserve-registry`` end to end: what it prints, what it records, how it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_registry.cli import main
from model_registry.store import Registry

from .conftest import ROOT, Backend, model_dir


def registry_cli(backend: Backend, *args: str) -> int:
    return main(["--registry-uri", backend.uri, "--actor", "tester", *args])


def report(name: str, version: str | None, status: str = "pass", pairs: int = 500) -> dict[str, Any]:
    """A compare report as `shadowserve-drift compare --json` writes it (the fields promotion reads)."""
    return {"format": "shadowserve.drift.report/1", "kind": "compare", "status": status, "shadow": "challenger",
            "counts": {"paired_predictions": pairs}, "judged": {"model": name, "version": version}}


def write(tmp_path: Path, document: object, name: str = "evidence.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def _two_versions(backend: Backend, name: str, tmp_path: Path) -> None:
    assert registry_cli(backend, "register", str(model_dir(tmp_path, name, 1)), "--name", name) == 0
    assert registry_cli(backend, "register", str(model_dir(tmp_path, name, 2)), "--name", name,
                        "--tag", "team=ml", "--training-run", "run-42") == 0
    assert registry_cli(backend, "alias", name, "champion", "1", "--reason", "first release") == 0
    assert registry_cli(backend, "alias", name, "challenger", "2") == 0


def test_register_prints_the_new_version_last(embedded: Backend, model_name: str, tmp_path: Path) -> None:
    source = model_dir(tmp_path, model_name, 1)
    run = subprocess.run([sys.executable, "-m", "model_registry", "--registry-uri", embedded.uri, "register",
                          str(source), "--name", model_name, "--tag", "owner=ml"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "1"
    version = Registry.open(embedded.uri).resolve(f"models:/{model_name}/1")
    assert version.tags["owner"] == "ml" and "shadowserve.lineage.source_revision" not in version.tags


def test_lineage_from_flags_and_from_the_git_checkout(embedded: Backend, model_name: str, tmp_path: Path) -> None:
    source = model_dir(tmp_path, model_name, 1)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "model"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert registry_cli(embedded, "register", str(source), "--name", model_name, "--data-snapshot", "s3://d/7") == 0
    (source / "labels.txt").write_text("changed\n")  # uncommitted: the revision says so
    assert registry_cli(embedded, "register", str(source), "--name", model_name, "--training-run", "r1") == 0
    assert registry_cli(embedded, "register", str(source), "--name", model_name, "--source-revision", "v1.2") == 0
    registry = Registry.open(embedded.uri)
    tags = [registry.resolve(f"models:/{model_name}/{n}").tags for n in (1, 2, 3)]
    assert tags[0]["shadowserve.lineage.source_revision"] == head
    assert tags[0]["shadowserve.lineage.data_snapshot"] == "s3://d/7"
    assert tags[1]["shadowserve.lineage.source_revision"] == f"{head}-dirty"
    assert tags[1]["shadowserve.lineage.training_run"] == "r1"
    assert tags[2]["shadowserve.lineage.source_revision"] == "v1.2"


@pytest.mark.parametrize("evidence_kind", ["compare", "verdict"])
def test_promotion_with_evidence_for_that_exact_version(backend: Backend, model_name: str, tmp_path: Path,
                                                         evidence_kind: str, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    _two_versions(backend, model_name, tmp_path)
    document = report(model_name, "2") if evidence_kind == "compare" else {
        "format": "shadowserve.canary.verdict/1", "model": model_name, "version": "2", "phase": "ready",
        "passed": True}
    evidence = write(tmp_path, document)
    capsys.readouterr()
    assert registry_cli(backend, "promote", model_name, "--to", "champion", "--evidence", str(evidence)) == 0
    assert f"promoted models:/{model_name}/2 to @champion (was 1)" in capsys.readouterr().out
    registry = backend.open()
    version = registry.resolve(f"models:/{model_name}@champion")
    assert version.version == 2
    recorded = json.loads(version.tags["shadowserve.evidence.champion"])
    assert recorded["actor"] == "tester" and len(recorded["evidence_sha256"]) == 64
    last = registry.history(model_name)[-1]
    assert (last.action, last.alias, last.version, last.previous) == ("promote", "champion", 2, 1)


@pytest.mark.parametrize(("document", "message"), [
    ({"format": "nope"}, "has format 'nope'"),
    ("just text", "not a JSON object"),
    (report("{name}", "1"), "judged version(s) 1"),  # evidence for the champion, not the challenger
    (report("other-model", "2"), "judged model 'other-model'"),
    (report("{name}", None) | {"judged": {"model": "{name}", "version": None, "versions": {"1": 5, "2": 5}}},
     "judged version"),
    (report("{name}", "2", status="disagreement"), "status is 'disagreement'"),
    (report("{name}", "2", pairs=0), "compared no pairs"),
    ({k: v for k, v in report("{name}", "2").items() if k != "judged"}, "does not say which version"),
    ({"format": "shadowserve.canary.verdict/1", "model": "{name}", "version": "2", "phase": "rolled_back",
      "passed": False}, "phase is 'rolled_back'"),
])
def test_promotion_is_refused_without_matching_evidence(embedded: Backend, model_name: str, tmp_path: Path,
                                                        document: Any, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _two_versions(embedded, model_name, tmp_path)
    text = json.dumps(document).replace("{name}", model_name)
    evidence = tmp_path / "evidence.json"
    evidence.write_text(text)
    capsys.readouterr()
    assert registry_cli(embedded, "promote", model_name, "--to", "champion", "--evidence", str(evidence)) == 1
    err = capsys.readouterr().err
    assert err.startswith("shadowserve-registry: refused:") and message in err and err.count("\n") == 1
    registry = Registry.open(embedded.uri)
    assert registry.resolve(f"models:/{model_name}@champion").version == 1  # nothing moved
    assert registry.history(model_name)[-1].action == "refused"


def test_evidence_that_is_no_json_or_no_file(embedded: Backend, model_name: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _two_versions(embedded, model_name, tmp_path)
    (tmp_path / "bad.json").write_bytes(b"\x00{")
    assert registry_cli(embedded, "promote", model_name, "--to", "champion", "--evidence",
                        str(tmp_path / "bad.json")) == 1
    assert registry_cli(embedded, "promote", model_name, "--to", "champion", "--evidence",
                        str(tmp_path / "missing.json")) == 2
    assert "cannot read the evidence" in capsys.readouterr().err


def test_the_audit_log_after_a_release(backend: Backend, model_name: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """register v1 and v2, v1 champion, v2 challenger, a refused promotion, a rollback: all in the history."""
    _two_versions(backend, model_name, tmp_path)
    registry_cli(backend, "promote", model_name, "--to", "champion", "--evidence",
                 str(write(tmp_path, report(model_name, "2", status="disagreement"))))
    assert registry_cli(backend, "alias", model_name, "champion", "2", "--reason", "hotfix by hand") == 0
    assert registry_cli(backend, "rollback", model_name, "--reason", "p99 doubled") == 0
    capsys.readouterr()
    assert registry_cli(backend, "history", model_name, "--json") == 0
    log = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e["alias"], e["version"], e["previous"]) for e in log] == [
        ("register", None, 1, None), ("register", None, 2, None), ("alias", "champion", 1, None),
        ("alias", "challenger", 2, None), ("refused", "champion", 2, None), ("alias", "champion", 2, 1),
        ("rollback", "champion", 1, 2)]
    assert all(e["actor"] == "tester" and e["time"] > 0 for e in log)
    assert log[-1]["reason"] == "p99 doubled" and "disagreement" in log[4]["reason"]
    assert registry_cli(backend, "history", model_name) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[-1].endswith("rollback @champion 2 -> 1: p99 doubled")


def test_pull_and_resolve(backend: Backend, model_name: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _two_versions(backend, model_name, tmp_path)
    capsys.readouterr()
    assert registry_cli(backend, "resolve", f"models:/{model_name}@challenger", "--format", "build-args") == 0
    digest = backend.open().resolve(f"models:/{model_name}/2").manifest_digest
    assert capsys.readouterr().out.split() == ["--build-arg", "MODEL_VERSION=2", "--build-arg",
                                               f"MODEL_MANIFEST_SHA256={digest}"]
    assert registry_cli(backend, "pull", f"models:/{model_name}@champion", "--dest", str(tmp_path / "repo")) == 0
    assert (tmp_path / "repo" / model_name / "1" / "model.pt").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["resolve", "models:/{name}@nope"], "has no alias 'nope'"),
    (["pull", "models:/{name}/1", "models:/bad", "--dest", "{tmp}/r"], "names no version or alias"),
    (["alias", "{name}", "champion", "x"], "is not valid"),
    (["register", "{tmp}", "--name", "{name}"], "is not a Triton model directory"),
    (["register", "{tmp}/nowhere", "--name", "{name}"], "is not a directory"),
    (["rollback", "{name}"], "no earlier version for @champion"),
])
def test_bad_input_is_one_line_and_exit_2(embedded: Backend, model_name: str, tmp_path: Path, args: list[str],
                                          message: str, capsys: pytest.CaptureFixture[str]) -> None:
    _two_versions(embedded, model_name, tmp_path)
    capsys.readouterr()
    filled = [a.replace("{name}", model_name).replace("{tmp}", str(tmp_path)) for a in args]
    assert registry_cli(embedded, *filled) == 2
    err = capsys.readouterr().err
    assert err.startswith("shadowserve-registry: error:") and message in err and err.count("\n") == 1
