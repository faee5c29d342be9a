"""Every class of client mistake gets its status and a message; the server keeps serving."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import RunningServer, write_model

ROWS = {"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers) as response:
                return response.status, orjson.loads(await response.read())
    return asyncio.run(go())


def get(url: str) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                return response.status, orjson.loads(await response.read())
    return asyncio.run(go())


@pytest.mark.parametrize("path, body, status, message", [
    ("classifier/infer", b"{oops", 400, "not valid JSON"),
    ("classifier/infer", orjson.dumps({"inputs": [{**ROWS, "name": "PIXELS"}]}), 400,
     "has no input 'PIXELS'; its inputs are INPUT__0"),
    ("classifier/infer", orjson.dumps({"inputs": [{**ROWS, "datatype": "FP64"}]}), 400, "must be FP32, got FP64"),
    ("classifier/infer", orjson.dumps({"inputs": [{**ROWS, "shape": [1, 63], "data": [0.5] * 63}]}), 400,
     r"shape \[1, 63\] but model 'classifier' expects \[-1, 64\]"),
    ("classifier/infer", orjson.dumps({"inputs": [{**ROWS, "shape": [65, 64], "data": [0.5] * 64 * 65}]}), 400,
     "batch size 65"),
    ("classifier/infer", orjson.dumps({"inputs": [{**ROWS, "data": [0.5] * 10}]}), 400, "needs 64 values"),
    ("classifier/infer", orjson.dumps({"inputs": [ROWS], "outputs": [{"name": "PROBS"}]}), 400,
     "no output 'PROBS'"),
    ("sentiment/infer", orjson.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1],
                                                 "data": ["a"]}, {**ROWS, "name": "TEXT2"}]}), 400, "TEXT2"),
    ("nope/infer", orjson.dumps({"inputs": [ROWS]}), 404, "Request for unknown model: 'nope' is not found"),
    ("classifier/versions/7/infer", orjson.dumps({"inputs": [ROWS]}), 404,
     "Request for unknown model: 'classifier' version 7 is not found"),
    ("classifier/versions/x/infer", orjson.dumps({"inputs": [ROWS]}), 404, "positive integers"),
])
def test_mistakes_get_their_status_and_message(examples_server: RunningServer, path: str, body: bytes,
                                               status: int, message: str) -> None:
    got_status, got = post(f"http://{examples_server.url}/v2/models/{path}", body)
    assert got_status == status
    assert list(got) == ["error"]
    assert re.search(message, got["error"]), got["error"]
    ok_status, ok = post(f"http://{examples_server.url}/v2/models/classifier/infer", orjson.dumps({"inputs": [ROWS]}))
    assert ok_status == 200 and ok["outputs"][0]["shape"] == [1, 10]


def test_unknown_model_metadata_is_404_with_a_v2_body(examples_server: RunningServer) -> None:
    status, body = get(f"http://{examples_server.url}/v2/models/nope")
    assert status == 404 and body["error"].startswith("Request for unknown model: 'nope' is not found")
    status, body = get(f"http://{examples_server.url}/v2/models/nope/config")
    assert status == 404


def test_bad_binary_header_length(examples_server: RunningServer) -> None:
    status, body = post(f"http://{examples_server.url}/v2/models/classifier/infer", orjson.dumps({"inputs": [ROWS]}),
                        {"Inference-Header-Content-Length": "ten"})
    assert status == 400 and "must be an integer" in body["error"]


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from .conftest import EXAMPLES
    server = RunningServer(EXAMPLES, max_request_bytes=1024)
    yield server
    server.stop()


def test_bodies_over_the_limit_get_413(small_limit_server: RunningServer) -> None:
    big = orjson.dumps({"inputs": [{**ROWS, "shape": [8, 64], "data": [0.123456] * 512}]})
    assert len(big) > 1024
    status, body = post(f"http://{small_limit_server.url}/v2/models/classifier/infer", big)
    assert status == 413 and "--max-request-bytes" in body["error"]

    async def chunked() -> tuple[int, dict]:  # no Content-Length: the limit holds while reading
        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 100):
                yield big[start:start + 100]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{small_limit_server.url}/v2/models/classifier/infer",
                                    data=stream()) as response:
                return response.status, orjson.loads(await response.read())
    status, body = asyncio.run(chunked())
    assert status == 413 and "--max-request-bytes" in body["error"]
    status, _ = post(f"http://{small_limit_server.url}/v2/models/classifier/infer", orjson.dumps({"inputs": [ROWS]}))
    assert status == 200


FAULTY = '''
import torch
import serving


class Faulty(serving.Model):
    def predict(self, inputs):
        x = inputs["X"]
        if (x < 0).any():
            raise ValueError("negative input reached the model")
        if (x > 100).any():
            return {"Y": torch.zeros(1, 1)}  # wrong batch dimension
        if (x == 42).any():
            return {"Y": x.double()}  # wrong datatype
        return {"Y": x * 2}
'''
FAULTY_CONFIG = '''
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
'''


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("mixed")
    write_model(repo, "faulty", FAULTY_CONFIG, {1: {"model.py": FAULTY}})
    write_model(repo, "bad_config", "this is not pbtxt", {1: {}})
    write_model(repo, "missing_file", FAULTY_CONFIG, {1: {}})
    write_model(repo, "raises_on_load", FAULTY_CONFIG, {1: {"model.py": '''
        import serving
        class Broken(serving.Model):
            def load(self):
                raise RuntimeError("weights are corrupt")
        '''}})
    write_model(repo, "no_versions", FAULTY_CONFIG, {})
    server = RunningServer(repo)
    yield server
    server.stop()


def x_request(value: float, rows: int = 1) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows, 1], "data": [value] * rows}]})


def test_broken_models_are_reported_and_the_others_serve(mixed_repository: RunningServer) -> None:
    url = f"http://{mixed_repository.url}"
    status, index = post(url + "/v2/repository/index", b"")
    assert status == 200
    states = {row["name"]: row for row in index}
    assert states["faulty"]["state"] == "READY"
    assert "not a valid ModelConfig" in states["bad_config"]["reason"]
    assert "model.py is missing" in states["missing_file"]["reason"]
    assert "load failed: weights are corrupt" in states["raises_on_load"]["reason"]  # no exception class name
    assert "no version directory" in states["no_versions"]["reason"]
    for name in ("bad_config", "missing_file", "raises_on_load", "no_versions"):
        assert states[name]["state"] == "UNAVAILABLE"
        status, body = post(f"{url}/v2/models/{name}/infer", x_request(1))
        assert status == 503 and f"Request for unknown model: '{name}' has no available versions" in body["error"]
    # strict readiness: the server is live and serves, but does not call itself ready
    assert get(url + "/v2/health/live")[0] == 200
    assert get(url + "/v2/health/ready")[0] == 503
    status, body = post(url + "/v2/models/faulty/infer", x_request(1.5))
    assert status == 200 and body["outputs"][0]["data"] == [3.0]


@pytest.mark.parametrize("value, message", [
    (-1.0, "failed: negative input reached the model"),
    (101.0, "the first dimension must be the batch"),
    (42.0, "float64 but config.pbtxt declares FP32"),
])
def test_handler_failures_are_500_for_that_batch_only(mixed_repository: RunningServer, value: float,
                                                      message: str) -> None:
    url = f"http://{mixed_repository.url}/v2/models/faulty/infer"
    status, body = post(url, x_request(value, rows=2))
    assert status == 500 and message in body["error"] and "Traceback" not in body["error"]
    assert "Error:" not in body["error"]  # the exception's message, never its class
    status, body = post(url, x_request(2.0, rows=3))
    assert status == 200 and body["outputs"][0]["data"] == [4.0] * 3


def test_failures_are_counted_by_reason(mixed_repository: RunningServer) -> None:
    post(f"http://{mixed_repository.url}/v2/models/faulty/infer", x_request(-1))
    text = asyncio.run(_text(mixed_repository.metrics_url))
    line = next(row for row in text.splitlines()
                if row.startswith('nv_inference_request_failure{model="faulty",reason="BACKEND"'))
    assert float(line.split()[-1]) >= 1


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return await response.text()


def test_a_missing_repository_is_a_clear_start_up_error(tmp_path: Path) -> None:
    from serving.errors import ConfigError
    with pytest.raises(ConfigError, match="is not a directory"):
        RunningServer(tmp_path / "absent")
