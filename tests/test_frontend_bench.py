"""benchmarks/frontend.py's parts, quickly and without Triton: the model, the request bodies, h2load's parser.

The bodies h2load sends are checked against a real serve (the TorchScript repository, and Triton's
Python-backend model.py, which serve also runs); h2load's summary and per-request log are parsed
from recorded samples. One short h2load run per protocol goes against serve where h2load is
installed (Debian's nghttp2-client); CI has none, and those tests say so.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from .conftest import ROOT, RunningServer

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their neighbours by bare names
import frontend  # benchmarks/frontend.py, through the sys.path entry above
import h2load  # benchmarks/h2load.py
from frontend_model import (
    GRPC_PATH,
    HTTP_PATH,
    MODEL,
    grpc_frame,
    grpc_message,
    unframe,
    write_repository,
    write_requests,
)
from frontend_systems import System, failures_between, probe_grpc, probe_http
from harness import Point

NO_H2LOAD = shutil.which("h2load") is None
NEEDS_H2LOAD = pytest.mark.skipif(NO_H2LOAD, reason="h2load is not installed (apt-get install nghttp2-client); "
                                  "the request bodies and the parser are checked without it")

GRPC_SAMPLE = """starting benchmark...
spawning thread #0: 4 total client(s). 6400 total requests
Application protocol: h2c
progress: 100% done

finished in 2.00s, 3191.50 req/s, 436.83KB/s
requests: 6383 total, 6447 started, 6383 done, 6383 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 6383 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 873.65KB (894621) total, 18.99KB (19449) headers (space savings 96.24%), 504.91KB (517023) data
                     min         max         mean         sd        +/- sd
time for request:     1.11ms     83.41ms     33.49ms     11.09ms    86.18%
time for connect:       93us       156us       130us        27us    75.00%
time to 1st byte:     5.33ms     20.12ms     13.36ms      6.32ms    50.00%
req/s           :     465.45      471.97      470.33        3.25    75.00%
"""
HTTP_404_SAMPLE = """finished in 52.10ms, 1919.39 req/s, 326.12KB/s
requests: 100 total, 100 started, 100 done, 0 succeeded, 100 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 100 4xx, 0 5xx
traffic: 16.99KB (17400) total, 11.52KB (11800) headers (space savings 0.00%), 1.37KB (1400) data
time for request:      310us     2.01ms      1.02ms       301us    70.00%
"""
REFUSED_SAMPLE = """finished in 1.20ms, 0.00 req/s, 0B/s
requests: 100 total, 0 started, 0 done, 0 succeeded, 100 failed, 100 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
"""


@pytest.fixture(scope="module")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_repository(tmp_path_factory.mktemp("frontend-repo"))


@pytest.fixture(scope="module")
def serve(repositories: tuple[Path, Path]) -> Iterator[RunningServer]:
    server = RunningServer(repositories[0])
    yield server
    server.stop()


def test_the_grpc_body_is_one_length_prefixed_model_infer_request(tmp_path: Path) -> None:
    grpc_file, json_file = write_requests(tmp_path)
    request = pb.ModelInferRequest.FromString(unframe(grpc_file.read_bytes()))
    assert request.model_name == MODEL
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])]
    assert [np.frombuffer(raw, "<i4").tolist() for raw in request.raw_input_contents] == [
        list(range(16)), [1] * 16]
    body = json.loads(json_file.read_bytes())
    assert [(i["name"], i["shape"], len(i["data"])) for i in body["inputs"]] == [
        ("INPUT0", [1, 16], 16), ("INPUT1", [1, 16], 16)]


def test_the_command_line_writes_the_repositories_and_the_bodies(tmp_path: Path) -> None:
    assert frontend.main(["--write-repository", str(tmp_path / "repo"), "--write-requests", str(tmp_path / "req")]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["repo/serve/simple/1/model.pt", "repo/serve/simple/config.pbtxt",
                       "repo/triton/simple/1/model.py", "repo/triton/simple/config.pbtxt",
                       "req/infer.grpc", "req/infer.json"]
    assert 'backend: "python"' in (tmp_path / "repo/triton/simple/config.pbtxt").read_text()


def test_serve_answers_both_bodies_right(serve: RunningServer) -> None:
    # probe_* raise when an answer is refused or wrong; the gRPC answer's framed size is what h2load counts
    assert probe_http(f"http://{serve.url}", "serve", check=True) > 0
    frame = probe_grpc(f"127.0.0.1:{serve.server.grpc_port}", "serve", check=True)
    assert frame > 5 + 2 * 16 * 4


def test_serve_runs_tritons_python_backend_model_alike(repositories: tuple[Path, Path]) -> None:
    server = RunningServer(repositories[1])
    try:
        assert probe_http(f"http://{server.url}", "serve on model.py", check=True) > 0
        assert probe_grpc(f"127.0.0.1:{server.server.grpc_port}", "serve on model.py", check=True) > 0
    finally:
        server.stop()


def test_the_parser_reads_a_recorded_grpc_run() -> None:
    summary = h2load.parse_summary(GRPC_SAMPLE)
    assert summary is not None
    assert (summary.seconds, summary.rps, summary.done, summary.succeeded, summary.failed) == (
        2.0, 3191.5, 6383, 6383, 0)
    assert summary.data_bytes == 517023 and summary.mean_ms == pytest.approx(33.49)
    latencies = np.array([1.0, 2.0, 3.0, 100.0])
    good = h2load.to_point(summary, latencies, 81, GRPC_SAMPLE)  # 517023 bytes = 6383 answers of 81
    assert (good.failures, good.requests, good.rps) == (0, 6383, 3191.5)
    short = h2load.to_point(summary, latencies, 82, GRPC_SAMPLE)  # as if some answers had carried no message
    assert short.failures == 6383 - 517023 // 82 and "gRPC errors" in short.detail[0]


def test_the_parser_counts_refusals_and_errors() -> None:
    not_found = h2load.to_point(h2load.parse_summary(HTTP_404_SAMPLE), np.ones(100), None, HTTP_404_SAMPLE)
    assert not_found.failures == 100 and not_found.detail == ["HTTP 4xx: 100"]
    summary = h2load.parse_summary(HTTP_404_SAMPLE)
    assert summary is not None and summary.seconds == pytest.approx(0.0521)
    refused = h2load.to_point(h2load.parse_summary(REFUSED_SAMPLE), np.empty(0), None, REFUSED_SAMPLE)
    assert refused.failures == 1 and refused.rps != refused.rps and "errored" in refused.detail[0]
    assert h2load.to_point(None, np.empty(0), None, "h2load: bad option").detail[0].startswith("h2load printed")


def test_percentiles_come_from_the_per_request_log(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    log.write_text("".join(f"1796173659851117\t200\t{us}\n" for us in range(1000, 101000, 1000)) + "garbage\n")
    latencies = h2load.log_latencies_ms(log)
    assert len(latencies) == 100 and latencies.min() == 1.0 and latencies.max() == 100.0


def test_cancellations_at_the_end_of_a_timed_run_are_not_failures() -> None:
    before = {"REJECTED": 0.0, "CANCELED": 3.0, "BACKEND": 0.0, "OTHER": 0.0}
    assert failures_between(before, {**before, "CANCELED": 67.0}, 64) == (0, "64 CANCELED")
    assert failures_between(before, {**before, "CANCELED": 70.0}, 64)[0] == 3
    assert failures_between(before, {**before, "BACKEND": 2.0}, 64) == (2, "2 BACKEND")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_the_parser_takes_any_text(text: str) -> None:
    summary = h2load.parse_summary(text)
    point = h2load.to_point(summary, np.empty(0), 81, text)
    assert point.failures >= 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_unframe_takes_only_one_whole_frame(data: bytes) -> None:
    try:
        message = unframe(data)
    except ValueError:
        return
    assert grpc_frame(message) == data


@NEEDS_H2LOAD
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_short_h2load_run_against_serve_succeeds(serve: RunningServer, tmp_path: Path, protocol: str) -> None:
    grpc_file, json_file = write_requests(tmp_path)
    if protocol == "grpc":
        base = f"http://127.0.0.1:{serve.server.grpc_port}"
        load = h2load.Load("grpc", GRPC_PATH, grpc_file, connections=2, streams=8)
        answer: int | None = probe_grpc(base, "serve", check=True)
    else:
        base, answer = f"http://{serve.url}", None
        load = h2load.Load("http", HTTP_PATH, json_file, connections=8)
    point = h2load.run(load, base, requests=300, answer_bytes=answer)
    assert (point.failures, point.requests, point.detail) == (0, 300, [])
    assert 0 < point.p50_ms <= point.p99_ms


@NEEDS_H2LOAD
def test_grpc_errors_that_h2load_counts_as_succeeded_are_caught(serve: RunningServer, tmp_path: Path) -> None:
    # an unknown model: serve answers HTTP 200 with grpc-status NOT_FOUND in the trailers and no message
    message = pb.ModelInferRequest.FromString(grpc_message())
    message.model_name = "no-such-model"
    body = tmp_path / "unknown.grpc"
    body.write_bytes(grpc_frame(message.SerializeToString()))
    base = f"http://127.0.0.1:{serve.server.grpc_port}"
    good = probe_grpc(base, "serve", check=True)
    point = h2load.run(h2load.Load("grpc", GRPC_PATH, body, connections=1, streams=4), base, requests=40,
                       answer_bytes=good)
    assert point.failures == 40 and "gRPC errors" in point.detail[-1]


def test_the_table_sets_serve_against_triton_and_the_floor_and_marks_failures() -> None:
    args = frontend.parse_args(["--repeats", "2", "--workers", ""])
    systems = [System("serve", "serve, one process", "serve", {"grpc": "g", "http": "h"}, lambda: None),
               System("triton", "Triton 2.51.0", "triton", {"grpc": "g", "http": "h"}, lambda: None),
               System("floor-grpc", "no-op grpc.aio", "floor", {"grpc": "g"}, lambda: None),
               System("floor-http", "no-op aiohttp", "floor", {"http": "h"}, lambda: None)]
    rps = {("serve", "grpc"): [900.0, 1100.0], ("triton", "grpc"): [2000.0, 2000.0],
           ("floor-grpc", "grpc"): [1000.0, 1000.0], ("serve", "http"): [3000.0, 3000.0],
           ("triton", "http"): [2000.0, 2000.0], ("floor-http", "http"): [4000.0, 4000.0]}
    points = {key: [Point(rps=r, p50_ms=1.0, p99_ms=2.0, requests=100) for r in values] for key, values in rps.items()}
    points[("serve", "http")][1] = Point(rps=3000.0, p50_ms=1.0, p99_ms=2.0, requests=100, failures=3,
                                         detail=["HTTP 5xx: 3"])
    raw = {"points": points, "batches": {("serve", "http"): [(300.0, 10.0)]}}
    text = frontend.render(args, systems, raw, {"serve --frontend-workers 2": "exited"})
    assert "- gRPC: serve, one process / Triton: **0.50** (per repetition: median 0.50 of 2)" in text
    assert "- HTTP JSON: serve, one process / Triton: **1.50**" in text
    assert "- gRPC, one process: serve / no-op floor: **1.00**" in text
    assert "- HTTP JSON, one process: serve / no-op floor: **0.75**" in text
    row = ("| HTTP JSON | serve, one process | 3,000 | 3,000–3,000 | 1.00 | 2.00 | **3 (invalid)** | 1.50 | 0.75 "
           "| 30.0 |")
    assert row in text and "- serve, one process (HTTP JSON): HTTP 5xx: 3" in text
    assert "- serve --frontend-workers 2: unavailable: exited" in text
