"""The command line as CI runs it: real subprocesses, real files, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sidecar.drift.cli import main
from sidecar.drift.synthetic import write_records

from .conftest import softmax

ROOT = Path(__file__).resolve().parents[2]


def drift(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.drift", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_profile_then_report_pass_and_drift(records: dict[str, Path]) -> None:
    root = records["root"]
    done = drift("profile", "--records", records["reference"], "--out", root / "ref.json")
    assert done.returncode == 0, done.stderr
    assert "profiled 3,000 records, 11 columns" in done.stdout
    passed = drift("report", "--reference", root / "ref.json", "--current", records["same"],
                   "--json", root / "same.json", "--fail-on", "drift")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "no drift in 11 columns" in passed.stdout
    found = drift("report", "--reference", records["reference"], "--current", records["shifted"],
                  "--json", root / "shifted.json", "--html", root / "shifted.html", "--fail-on", "drift")
    assert found.returncode == 1, found.stdout + found.stderr
    document = json.loads((root / "shifted.json").read_text())
    assert document["format"] == "shadowserve.drift.report/1" and document["status"] == "drift"
    assert document["kind"] == "window" and "probs[0]" in document["drifted_columns"]
    column = document["columns"][0]
    assert {"name", "kind", "drift", "test", "threshold", "value", "reason", "reference", "current",
            "statistics", "histogram"} <= set(column)
    assert column["test"] == "wasserstein" and column["threshold"] == 0.1
    assert document["settings"]["thresholds"] == {"wasserstein": 0.1, "js": 0.1, "psi": 0.2}
    assert document["current"]["records"] == 3000
    no_gate = drift("report", "--reference", root / "ref.json", "--current", records["shifted"])
    assert no_gate.returncode == 0 and "DRIFT" in no_gate.stdout  # reported, not gated


def test_compare_gates_on_disagreement(records: dict[str, Path]) -> None:
    root = records["root"]
    done = drift("compare", "--records", records["reference"], "--shadow", "v2", "--json", root / "c.json",
                 "--html", root / "c.html", "--fail-on", "disagreement")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DISAGREE" in done.stdout
    document = json.loads((root / "c.json").read_text())
    assert document["kind"] == "compare" and document["shadow"] == "v2" and document["disagreement"]
    assert document["outputs"][0]["name"] == "probs" and document["counts"]["paired_predictions"] == 3000
    lenient = drift("compare", "--records", records["reference"], "--shadow", "v2",
                    "--max-disagreement", "0.5", "--fail-on", "disagreement")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr


def test_usage_and_data_errors_exit_2(records: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = records["root"]
    missing = drift("report", "--reference", root / "nothing", "--current", records["same"])
    assert missing.returncode == 2 and "no records at" in missing.stderr  # as a subprocess, once
    with pytest.raises(SystemExit) as usage:
        main(["report", "--current", str(records["same"])])  # --reference missing
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as when:
        main(["report", "--reference", "x", "--current", "y", "--since", "soon"])
    assert when.value.code == 2
    assert main(["compare", "--records", str(records["reference"]), "--shadow", "v9"]) == 2
    assert "shadows seen: v2" in capsys.readouterr().err
    assert main(["report", "--reference", str(records["reference"]), "--current", str(records["same"]),
                 "--threshold", "kl=0.1"]) == 2
    assert "unknown threshold" in capsys.readouterr().err
    assert main(["merge", str(records["reference"] / "segment-00000.parquet"), "--out", str(root / "m.json")]) == 2


def test_merge_and_time_ranges(records: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = records["root"]
    for part in ("same", "shifted"):
        assert main(["profile", "--records", str(records[part]), "--out", str(root / f"{part}.json")]) == 0
    assert main(["merge", str(root / "same.json"), str(root / "shifted.json"), "--out", str(root / "both.json")]) == 0
    assert "6,000 predictions" in capsys.readouterr().out
    assert main(["report", "--reference", str(records["reference"]), "--reference-until", "2025-01-01T00:25:00Z",
                 "--current", str(records["reference"]), "--since", "2025-01-01T00:25:00",
                 "--json", str(root / "t.json")]) == 0
    document = json.loads((root / "t.json").read_text())
    assert document["reference"]["records"] == 1500 and document["current"]["records"] == 1500


def test_html_is_self_contained_and_stays_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    write_records(tmp_path / "big", {"probs": softmax(rng.normal(size=(n, 10)))},
                  shadows={"v2": {"probs": softmax(rng.normal(size=(n, 10)))}}, segment_rows=100_000)
    write_records(tmp_path / "small", {"probs": softmax(rng.normal(size=(500, 10)))})
    sizes = {}
    for name in ("big", "small"):
        done = drift("report", "--reference", tmp_path / "small", "--current", tmp_path / name,
                     "--html", tmp_path / f"{name}.html")
        assert done.returncode == 0, done.stderr
        sizes[name] = (tmp_path / f"{name}.html").stat().st_size
    assert sizes["big"] < 60_000 and sizes["big"] < 1.2 * sizes["small"]  # summaries, never the data
    done = drift("compare", "--records", tmp_path / "big", "--shadow", "v2", "--html", tmp_path / "c.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "c.html").read_text()
    assert len(page) < 80_000 and "<svg" in page and "<polyline" in page
    assert "src=" not in page and "http" not in page  # nothing fetched from anywhere
