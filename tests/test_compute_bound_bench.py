"""benchmarks/compute_bound.py's parts, quickly: the model serve loads, the limit, one gRPC point, the scrape.

The whole benchmark needs ``hey``; its HTTP points are not run here. A gRPC point runs for
under a second against a real server, so that the load processes, the shared start and the
two scrapes inside the load are what the benchmark runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import ROOT, RunningServer

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their neighbours by bare names
import compute_bound  # benchmarks/compute_bound.py, through the sys.path entry above
from compute_points import (
    BUSY,
    COMPUTE_SUM,
    DIMS,
    MODEL,
    Endpoints,
    between,
    build_repository,
    in_process_limit,
    measure,
    parse_snapshot,
    snapshot,
)
from harness import Unavailable


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repository = tmp_path_factory.mktemp("compute-bound")
    model_file = build_repository(repository)
    server = RunningServer(repository)
    yield server, model_file
    server.stop()


def test_serve_answers_as_the_model_in_process_and_counts_the_rows(mlp: tuple[RunningServer, Path]) -> None:
    server, model_file = mlp
    x = np.random.default_rng(3).standard_normal((8, DIMS[0])).astype(np.float32)
    before = snapshot(server.metrics_url, MODEL)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    try:
        request = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        served = client.infer(MODEL, [request]).as_numpy("OUTPUT__0")
    finally:
        client.close()
    after = snapshot(server.metrics_url, MODEL)
    with torch.inference_mode():
        expected = torch.jit.load(str(model_file)).eval()(torch.from_numpy(x)).numpy()
    assert served is not None and served.shape == (8, DIMS[-1])
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    assert after.batch_sum - before.batch_sum == 8 and after.batch_count - before.batch_count == 1
    assert after.busy_source in (BUSY, COMPUTE_SUM)
    assert sum(after.busy.values()) > sum(before.busy.values())


def test_a_grpc_point_measures_rows_busy_and_batches(mlp: tuple[RunningServer, Path], tmp_path: Path) -> None:
    server, _ = mlp
    endpoints = Endpoints(server.url, f"127.0.0.1:{server.server.grpc_port}", server.metrics_url)
    point = measure(endpoints, "grpc", rows=2, concurrency=4, duration=0.8, workdir=tmp_path, processes=2,
                    warmup_rounds=1, margin=0.2)
    assert point.failures == 0, point.detail
    assert point.rows_per_s > 0 and 0 < point.p50_ms <= point.p99_ms
    window = point.window
    assert window is not None and 0.3 < window.seconds < 0.8
    assert 2 <= window.batch <= 8  # requests of 2 rows, at most 4 in flight
    assert window.rows_per_s > 0 and 0 < window.busy_mean <= 1.05  # a fraction of wall time (scrape jitter)


def test_the_limit_restores_torch_threads(mlp: tuple[RunningServer, Path]) -> None:
    _, model_file = mlp
    threads = torch.get_num_threads()
    limit = in_process_limit(model_file, batch=4, threads=1, seconds=0.05, warmup=1)
    assert limit.rows_per_s > 0 and limit.calls >= 3 and limit.p50_ms <= limit.p99_ms
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("argv", [["--rows", "0"], ["--rows", "65"], ["--transports", "udp"],
                                  ["--quick", "--write"], ["--concurrency", "0"]])
def test_the_command_line_refuses_what_it_cannot_run(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        compute_bound.parse_args(argv)


labels = st.sampled_from(['model="mlp"', 'model="other"', 'model="mlp",instance="1"', ""])
lines = st.one_of(
    st.builds(lambda m, v: f"{BUSY}{{{m}}} {v}", labels, st.floats(0, 1e6)),
    st.builds(lambda m, v: f"{COMPUTE_SUM}{{{m}}} {v}", labels, st.floats(0, 1e6)),
    st.builds(lambda m, v: f"serving_batch_size_count{{{m}}} {v}", labels, st.integers(0, 10**6)),
    st.text(max_size=40))


@settings(max_examples=60, deadline=None)
@given(st.lists(lines, max_size=8))
def test_a_scrape_of_any_text_gives_figures_or_one_clear_error(text: list[str]) -> None:
    try:
        snap = parse_snapshot("\n".join(text) + "\n", MODEL)
    except Unavailable as exc:
        assert "did not parse" in str(exc)
        return
    assert snap.busy_source in (BUSY, COMPUTE_SUM) and all(isinstance(v, float) for v in snap.busy.values())


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["0", "1", "2"]), st.floats(0, 1e6), min_size=1))
def test_busy_seconds_are_read_per_instance(busy: dict[str, float]) -> None:
    text = "".join(f'{BUSY}{{model="mlp",version="1",instance="{i}",device="cpu"}} {v!r}\n'
                   f'{BUSY}{{model="other",version="1",instance="{i}",device="cpu"}} 7.0\n' for i, v in busy.items())
    snap = parse_snapshot(text + f'{COMPUTE_SUM}{{model="mlp",version="1"}} 99.0\n', MODEL)
    assert snap.busy_source == BUSY and snap.busy == busy


def test_a_window_over_the_busy_counter_appearing_falls_back_to_the_compute_sum() -> None:
    compute = f'{COMPUTE_SUM}{{model="mlp",version="1"}}'
    batches = ('serving_batch_size_sum{{model="mlp",version="1"}} {}\n'
               'serving_batch_size_count{{model="mlp",version="1"}} {}\n')
    first = parse_snapshot(f"{compute} 1.0\n" + batches.format(64, 1), MODEL, at=10.0)
    last = parse_snapshot(f'{compute} 3.0\n{BUSY}{{model="mlp",instance="0"}} 2.5\n' + batches.format(320, 5),
                          MODEL, at=14.0)
    window = between(first, last)
    assert window.busy_source == COMPUTE_SUM and window.busy == {"0": 0.5}
    assert window.batch == 64 and window.batches == 4 and window.rows_per_s == 64 and window.ms_per_batch == 500
