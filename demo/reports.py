"""The demo's offline reports: `shadowserve-drift` run as a user would, after the traffic."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sidecar.drift import Profile

from .processes import command
from .traffic import make_models

# A few thousand records per window: decide by KS and chi-square p-values (Bonferroni over the
# columns) at a family-wise 0.1%, so the control's false alarms stay rare and the shift, whose
# p-values are astronomically small, is found every time.
TESTS = ["--small-sample", "1000000", "--alpha", "0.001"]
SHADOW = "challenger"  # the shadow's name in the sidecar: the alias it is named by
# the bundled model's directory: its label_filename names the classes in the HTML reports
MODEL_DIR = Path(__file__).resolve().parent.parent / "examples" / "models" / "classifier"


def reference_profile(path: Path, primary_http: str, points: int = 1024, seed: int = 11) -> Path:
    """The live-drift reference: the primary's answers to unshifted traffic, as `shadowserve-drift profile` keeps them.

    In production the profile comes from recorded traffic (``shadowserve-drift profile --records``);
    the demo has none before it starts, so it asks the primary directly, in batches of the
    model's max_batch_size, and the sidecar's live drift gauges then have a reference to move from.
    """
    rows, _ = make_models.sample(points, np.random.default_rng(seed))
    answers = []
    for start in range(0, points, 64):
        batch = rows[start:start + 64]
        body = orjson.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": list(batch.shape),
                                         "data": batch.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY)
        request = urllib.request.Request(f"{primary_http}/v2/models/classifier/infer", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            output = orjson.loads(response.read(1 << 24))["outputs"][0]
        answers.append(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))
    profile = Profile.from_arrays({"OUTPUT__0": np.concatenate(answers)})
    profile.source["model"] = "classifier"
    profile.save(path)
    return path


def drift(out: Path, name: str, arguments: list[str]) -> dict[str, Any]:
    """Run shadowserve-drift as a user would; returns its JSON report (its table goes to the screen)."""
    report = out / "reports" / f"{name}.json"
    done = subprocess.run(command("sidecar.drift") + arguments + [
        "--model", "classifier", "--model-dir", str(MODEL_DIR), "--no-progress", "--json", str(report),
        "--html", str(report.with_suffix(".html"))],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"shadowserve-drift {' '.join(arguments)} exited {done.returncode}:\n{done.stderr}")
    print(done.stdout.rstrip())
    return json.loads(report.read_text())


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}+00:00"


def reports(out: Path, clients: dict[str, Any]) -> dict[str, Any]:
    """The drift of the shift, a control without one, and primary vs shadow."""
    records = str(out / "records")
    start, shift = clients["started_at"], clients["shifted_at"]
    middle = start + (shift - start) / 2
    print("\n== Drift: before the shift against after it ==")
    after = drift(out, "drift", ["report", "--reference", records, "--reference-until", iso(shift),
                                 "--current", records, "--since", iso(shift), *TESTS])
    print("\n== Control: the first half of the unshifted traffic against the second ==")
    control = drift(out, "control", ["report", "--reference", records, "--reference-until", iso(middle),
                                     "--current", records, "--since", iso(middle), "--until", iso(shift), *TESTS])
    print("\n== Primary (@champion) against the shadow (@challenger), on the same requests ==")
    compare = drift(out, "compare", ["compare", "--records", records, "--shadow", SHADOW])
    return {"after_shift": after, "control": control, "compare": compare}


def agreement(compare: dict[str, Any]) -> float:
    return float(compare["outputs"][0]["statistics"]["agreement"]["value"])


def judged(compare: dict[str, Any]) -> str:
    """The compare report's judged version, as the table shows it."""
    found = compare.get("judged") or {}
    if found.get("version") is not None:
        return f"version {found['version']} of {found.get('model')}"
    return f"no single version of {found.get('model')}: {found.get('versions')}"
