"""Ensembles in poll mode: step models that arrive late, get fixed, change or leave."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, write_model
from .test_ensemble_control import FIXTURES, STEP, one_step

IDENTITY_PY = """
    import serving


    class Identity(serving.Model):
        def predict(self, inputs):
            return {"Y": inputs["X"] * FACTOR}


    FACTOR = 1
"""
FAILING_PY = """
    import serving


    class Flaky(serving.Model):
        def load(self):
            raise RuntimeError("not today")
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for name in ("preprocessor", "classifier", "pipeline"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    write_model(tmp_path, "late", one_step("late", "late_step"), {1: {}})
    write_model(tmp_path, "over_flaky", one_step("over_flaky", "flaky"), {1: {}})
    write_model(tmp_path, "flaky", STEP.replace("{name}", "flaky"), {1: {"model.py": FAILING_PY}})
    return tmp_path


@pytest.fixture
def server(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository, model_control_mode="poll", repository_poll_secs=3600.0)
    yield running
    running.stop()


def poll(server: RunningServer) -> None:
    assert server.server.control is not None
    server.call(server.server.control.poll_once())


def index(server: RunningServer) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in httpclient.InferenceServerClient(server.url).get_model_repository_index()}


def infer(server: RunningServer, model: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = httpclient.InferenceServerClient(server.url).infer(model, [tensor])
    return {out["name"]: result.as_numpy(out["name"]) for out in result.get_response()["outputs"]}


X = np.full((1, 4), 3, np.float32)


def test_an_ensemble_serves_once_its_missing_or_broken_step_model_is_there(server: RunningServer,
                                                                          repository: Path) -> None:
    rows = index(server)
    assert rows["late"]["state"] == "UNAVAILABLE" and "'late_step' is not in the repository" in rows["late"]["reason"]
    assert rows["over_flaky"]["state"] == "UNAVAILABLE" and "not today" in rows["over_flaky"]["reason"]
    assert rows["pipeline"]["state"] == "READY"
    write_model(repository, "late_step", STEP.replace("{name}", "late_step"), {1: {"model.py": IDENTITY_PY}})
    write_model(repository, "flaky", STEP.replace("{name}", "flaky"),
                {1: {"model.py": IDENTITY_PY.replace("FACTOR = 1", "FACTOR = 2")}})
    poll(server)
    rows = index(server)
    assert rows["late"]["state"] == rows["over_flaky"]["state"] == "READY"
    np.testing.assert_array_equal(infer(server, "late", "X", X)["OUT"], X)
    np.testing.assert_array_equal(infer(server, "over_flaky", "X", X)["OUT"], 2 * X)


def test_a_step_model_that_changes_or_leaves(server: RunningServer, repository: Path) -> None:
    raw = np.full((1, 4), 192, np.float32)
    before = infer(server, "pipeline", "RAW", raw)["PROBS"]
    model_py = repository / "preprocessor" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace("/ 64.0", "/ 32.0"))  # the step now scales twice as much
    poll(server)
    after = infer(server, "pipeline", "RAW", raw)["PROBS"]
    assert not np.allclose(before, after)
    shutil.rmtree(repository / "classifier")
    poll(server)
    with pytest.raises(InferenceServerException) as caught:
        infer(server, "pipeline", "RAW", raw)
    assert caught.value.status() == "503"
    assert caught.value.message().startswith("in ensemble 'pipeline', step 2 (model 'classifier'): ")
