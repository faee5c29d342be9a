"""Poll mode, side by side with tritonserver: models added, removed, changed and broken on disk.

Both servers poll one repository (a copy of a few fixture models) every second; after each
change the test waits, with a deadline, until both have seen it, then compares their index rows.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .answers import http, without_traceback
from .servers import Pair, start_serve
from .triton import REPOSITORY, Triton

pytestmark = pytest.mark.timeout(900)  # the first test may install the wheel and start tritonserver


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("poll") / "models"
    for name in ("simple", "preprocess"):
        shutil.copytree(REPOSITORY / name, root / name)
    return root


@pytest.fixture(scope="module")
def pair(start_triton: Callable[..., Triton], repository: Path) -> Iterator[Pair]:
    triton = start_triton(repository, "--model-control-mode", "poll", "--repository-poll-secs", "1")
    servers = Pair(triton, start_serve(repository, model_control_mode="poll", repository_poll_secs=1.0))
    yield servers
    servers.stop()


def index(url: str) -> dict[str, dict[str, Any]]:
    answer = http(url, "POST", "/v2/repository/index", {})
    assert answer.status == 200, answer
    return {row["name"]: row for row in answer.body}


def settled(pair: Pair, seen: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 30) -> tuple[dict, dict]:
    """Both servers' index rows once ``seen`` holds for each (fails at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = index(pair.triton.url), index(pair.serve.url)
        if all(seen(each) for each in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_the_models_at_start(pair: Pair) -> None:
    triton, serve = settled(pair, lambda rows: rows.get("simple", {}).get("state") == "READY")
    assert {name: row["state"] for name, row in serve.items()} == {name: row["state"] for name, row in triton.items()}


def test_a_model_added(pair: Pair, repository: Path) -> None:
    shutil.copytree(REPOSITORY / "simple_string", repository / "simple_string")
    settled(pair, lambda rows: rows.get("simple_string", {}).get("state") == "READY")


def test_a_model_removed(pair: Pair, repository: Path) -> None:
    """Triton unloads it and drops its row; a request to it then finds no version."""
    shutil.rmtree(repository / "preprocess")
    settled(pair, lambda rows: rows.get("preprocess", {}).get("state") not in ("READY", "UNLOADING"))
    body = {"inputs": [{"name": "RAW", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}
    deadline = time.monotonic() + 30
    while True:  # Triton drops the row before the last instance is gone
        triton, serve = pair.http("POST", "/v2/models/preprocess/infer", body)
        if triton.status != 200 and serve.status != 200:
            break
        assert time.monotonic() < deadline, (triton, serve)
        time.sleep(0.2)
    assert (triton.status, triton.error) == (404, "Request for unknown model: 'preprocess' has no available versions")
    assert serve.status in (404, 503) and serve.error.startswith("Request for unknown model: 'preprocess'"), serve


@pytest.mark.xfail(strict=True, reason="serve keeps a row for a model removed from the repository "
                   "(UNAVAILABLE, 'unloaded'); Triton drops the row")
def test_a_removed_model_leaves_the_index(pair: Pair) -> None:
    triton, serve = settled(pair, lambda rows: rows.get("preprocess", {}).get("state") != "READY")
    assert "preprocess" not in triton
    assert "preprocess" not in serve


def test_a_model_that_raises_in_initialize_added(pair: Pair, repository: Path) -> None:
    shutil.copytree(REPOSITORY / "init_fails", repository / "init_fails")
    triton, serve = settled(pair, lambda rows: rows.get("init_fails", {}).get("state") == "UNAVAILABLE")
    cause = without_traceback(triton["init_fails"]["reason"]).removeprefix("Internal: ")
    assert cause in serve["init_fails"]["reason"]
    assert serve["simple"]["state"] == triton["simple"]["state"] == "READY"  # the others keep serving


def test_a_changed_config_is_reloaded(pair: Pair, repository: Path) -> None:
    config = repository / "simple" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    deadline = time.monotonic() + 30
    while True:
        sizes = [http(url, "GET", "/v2/models/simple/config").body.get("max_batch_size")
                 for url in (pair.triton.url, pair.serve.url)]
        if sizes == [4, 4]:
            break
        assert time.monotonic() < deadline, sizes
        time.sleep(0.2)


def test_load_and_unload_are_refused_in_poll_mode(pair: Pair) -> None:
    triton, serve = pair.http("POST", "/v2/repository/models/simple/load", {})
    assert (triton.status, triton.error) == (503, "explicit model load / unload is not allowed if polling is enabled")
    assert serve.status in (400, 503) and serve.error, serve
