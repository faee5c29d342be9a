"""The demo's model registry: `shadowserve-registry` run as a user would, on an embedded registry.

Before the traffic, version 1 and version 2 of the example classifier are registered and
aliased (`@champion` -> 1, `@challenger` -> 2); after it, the canary verdict is saved, version 2's
promotion is tried on the compare report (and refused: it disagrees with version 1), and the
audit log is read back.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from model_registry.audit import AuditEntry  # pure: renders history lines exactly as the CLI does

from .processes import command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "models" / "classifier"
NAME = "classifier"
CHAMPION, CHALLENGER = f"models:/{NAME}@champion", f"models:/{NAME}@challenger"
MAX_VERDICT_BYTES = 16 * 1024 * 1024  # the decision log of a short demo is a few kB


def location(out: Path) -> Path:
    """The embedded registry: a directory holding the SQLite database and the artifact store."""
    return out / "registry"


def cli(out: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``shadowserve-registry --registry-uri <out>/registry ARGUMENTS``; a failure raises unless ``check`` is off."""
    argv = [*command("model_registry"), "--registry-uri", str(location(out)), *arguments]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if check and done.returncode != 0:
        raise RuntimeError(f"shadowserve-registry {' '.join(arguments)} exited {done.returncode}:\n"
                           f"{done.stderr.strip()}")
    return done


def publish(out: Path) -> dict[str, int]:
    """Register versions 1 and 2 of the example and point @champion at 1, @challenger at 2."""
    versions = {}
    for directory in ("1", "2"):
        done = cli(out, "register", str(EXAMPLE.relative_to(ROOT)), "--name", NAME, "--version-dir", directory)
        versions[directory] = int(done.stdout.split()[-1])  # register prints the new version as its last line
        print(f"  {done.stdout.splitlines()[0]}")
    for alias, directory, reason in (("champion", "1", "the version in production"),
                                     ("challenger", "2", "retrained; to be shadowed and canaried")):
        done = cli(out, "alias", NAME, alias, str(versions[directory]), "--reason", reason)
        print(f"  {done.stdout.strip()}")
    return {"champion": versions["1"], "challenger": versions["2"]}


def save_verdict(admin: str, path: Path) -> dict[str, Any]:
    """``curl -fsS <admin>/sidecar/canary/verdict > PATH``: the canary's evidence for promotion."""
    with urllib.request.urlopen(f"{admin}/sidecar/canary/verdict", timeout=5) as response:
        data = response.read(MAX_VERDICT_BYTES + 1)
    if len(data) > MAX_VERDICT_BYTES:
        raise RuntimeError(f"the canary verdict is larger than {MAX_VERDICT_BYTES} bytes")
    path.write_bytes(data)
    verdict: dict[str, Any] = json.loads(data)
    return verdict


def promote(out: Path, evidence: Path) -> dict[str, Any]:
    """Try to promote @challenger to @champion on ``evidence``; the exit status and what was printed."""
    print(f"\n== shadowserve-registry promote {NAME} --to champion --evidence {evidence.relative_to(out)} ==")
    done = cli(out, "promote", NAME, "--to", "champion", "--evidence", str(evidence), check=False)
    if done.returncode not in (0, 1):  # 1 is a refusal, which the demo expects; 2 is a broken registry
        raise RuntimeError(f"shadowserve-registry promote exited {done.returncode}:\n{done.stderr.strip()}")
    printed = (done.stdout + done.stderr).strip()
    print(f"{printed}\n(exit status {done.returncode})")
    return {"exit_status": done.returncode, "output": printed}


def history(out: Path) -> list[dict[str, Any]]:
    """The audit log, oldest first, printed as ``shadowserve-registry history classifier`` prints it.

    One call with ``--json`` (MLflow's import costs seconds per call) gives both the lines, rendered
    by the same `AuditEntry.line` as the plain form, and the entries the summary keeps.
    """
    print(f"\n== shadowserve-registry history {NAME} ==")
    done = cli(out, "history", NAME, "--json")
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    for entry in entries:
        print(AuditEntry(**entry).line())
    return entries


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    """What summary.json keeps of an audit entry (the metrics stay in the registry)."""
    kept = {key: entry.get(key) for key in ("action", "actor", "version", "alias", "previous", "reason")}
    details = entry.get("details") or {}
    if isinstance(details.get("metrics"), dict):
        kept["disagreement"] = details["metrics"].get("disagreement")
        kept["checks"] = details.get("checks")
    return kept


def actions(entries: list[dict[str, Any]]) -> str:
    """The audit log in one line for the summary table: each action, with its alias and version."""
    def one(entry: dict[str, Any]) -> str:
        where = f" @{entry['alias']}" if entry.get("alias") else ""
        return f"{entry['action']}{where} v{entry['version']}" if entry.get("version") is not None \
            else f"{entry['action']}{where}"
    return ", ".join(one(entry) for entry in entries)
