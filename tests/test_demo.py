"""The README's first command, shortened: the whole system on the bundled example, end to end,
with its models from the embedded registry and the canary's rollback in the registry's audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from .conftest import ROOT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)  # the subprocess's own 240 s bound comes first, with the demo's output
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "demo", "--duration", "14", "--concurrency", "6", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    clients = summary["clients"]
    assert clients["failures"] == [] and sum(clients["ok"].values()) == sum(clients["sent"].values())
    assert clients["ok"]["http"] > 100 and clients["ok"]["grpc"] > 20  # both protocols carried traffic
    assert summary["drift_after_shift"] is True
    assert summary["drift_in_control"] is False
    assert 0.5 < summary["shadow_agreement"] < 1.0  # version 2 answers differently on some inputs
    canary = summary["canary"]["canary"]  # the sidecar's status, read right after the traffic
    live = [v for v in summary["canary"]["drift"]["values"] if v["output"].endswith(".top1")]
    assert "primary" in {v["upstream"] for v in live}, "live drift compares the primary's top-1 to its profile"
    assert (canary["phase"], canary["weight"]) == ("rolled_back", 0.0)
    failed = [d for d in canary["decisions"] if d["source"] == "analysis" and d["verdict"] == "fail"]
    assert len(failed) >= 2 and [(d["action"], d["failures"]) for d in failed[-2:]] == [("hold", 1), ("rollback", 2)]
    rollback = failed[-1]  # after failure_limit (2) failed intervals in a row
    assert (rollback["weight_from"], rollback["weight_to"]) == (10.0, 0.0)
    for decision in failed:  # version 2 disagrees with version 1 on about 13% of rows; the limit is 5%
        (check,) = [c for c in decision["checks"] if c["name"] == "disagreement"]
        assert check["status"] == "fail" and 0.05 < decision["metrics"]["disagreement"] < 0.3
        assert decision["metrics"]["canary_requests"] >= 20 and decision["metrics"]["canary_errors"] == 0
    assert set(summary["exit_statuses"].values()) == {0}
    assert not any(alive(pid) for pid in summary["pids"])
    assert (out / "reports" / "drift.html").stat().st_size > 1000
    labels = (ROOT / "examples" / "models" / "classifier" / "labels.txt").read_text().split()
    assert all(f">{name}<" in (out / "reports" / "compare.html").read_text() for name in labels), "class names"
    assert (out / "reports" / "compare.html").stat().st_size > 1000
    records = ds.dataset(str(out / "records"), format="parquet").to_table(
        columns=["request_id", "protocol", "timestamp", "primary"])
    assert records.num_rows >= 0.9 * sum(clients["ok"].values())
    assert set(records.column("protocol").to_pylist()) == {"http", "grpc"}
    # the rollback took effect: the canary served its slice before it, and nothing received after it
    received = [ts.timestamp() for ts in records.column("timestamp").to_pylist()]
    upstreams = pc.struct_field(records.column("primary"), "upstream").to_pylist()
    served = [ts for ts, upstream in zip(received, upstreams, strict=True) if upstream == "canary"]
    assert served and min(served) < rollback["time"]
    assert max(served) < rollback["time"] + 0.5, "the canary served requests after it was rolled back"
    assert sum(ts > rollback["time"] + 0.5 for ts in received) > 100
    assert sorted(p.name for p in out.iterdir()) == ["records", "registry", "reports", "summary.json"]
    assert "Drift: before the shift against after it" in done.stdout
    assert_registry(out, summary, rollback, done.stdout)


def assert_registry(out: Path, summary: dict[str, Any], rollback: dict[str, Any], stdout: str) -> None:
    """Served from the registry, judged by version, refused promotion, and the whole story in the audit log."""
    assert summary["aliases"] == {"champion": 1, "challenger": 2}
    assert summary["judged"] == {"model": "classifier", "version": "2"}  # the compare report judged the shadow's v2
    # the status names the models by their registry URIs, resolved to the versions served
    assert summary["canary"]["registry"]["models"] == {"models:/classifier@challenger": 2}
    verdict = json.loads((out / "reports" / "verdict.json").read_text())
    assert verdict["format"] == "shadowserve.canary.verdict/1"
    assert (verdict["model"], verdict["version"], verdict["registry"]) == ("classifier", "2",
                                                                          "models:/classifier@challenger")
    assert (verdict["phase"], verdict["passed"]) == ("rolled_back", False)
    assert summary["verdict"]["version"] == "2"
    promotion = summary["promotion"]  # version 2 disagrees with version 1 on ~13%: no promotion
    assert promotion["exit_status"] == 1 and "refused" in promotion["output"]
    history = summary["history"]
    moves = [(e["action"], e["alias"], e["version"]) for e in history if e["action"] in ("register", "alias")]
    assert moves == [("register", None, 1), ("register", None, 2), ("alias", "champion", 1), ("alias", "challenger", 2)]
    assert all(e["reason"] for e in history if e["action"] == "alias")  # each alias move says why
    (logged,) = [e for e in history if e["action"] == "rollback"]
    assert logged["actor"].startswith("sidecar@") and (logged["alias"], logged["version"]) == ("challenger", 2)
    assert logged["reason"] == rollback["reason"] and "disagreement" in logged["reason"]
    assert logged["checks"]["disagreement"] == "fail"
    assert logged["disagreement"] == rollback["metrics"]["disagreement"]
    assert not any(e["actor"].startswith("sidecar@") for e in history if e["action"] not in ("rollback", "ramp"))
    assert history[-1]["action"] == "refused" and (history[-1]["alias"], history[-1]["version"]) == ("champion", 2)
    assert "its status is 'disagreement'" in history[-1]["reason"]
    assert [e["action"] for e in history if e["action"] not in ("ramp",)] == [
        "register", "register", "alias", "alias", "rollback", "refused"]
    # what the user reads: the refusal and the audit log as `shadowserve-registry history` prints it
    assert "(exit status 1)" in stdout and "== shadowserve-registry history classifier ==" in stdout
    assert "rollback @challenger 2: rollback after 2 failed interval(s)" in stdout
    assert "refused @champion 2: the report did not pass" in stdout
