"""Live drift gauges through the sidecar, against a reference profile of the primary's answers.

The gauges must equal what `sidecar.drift.LiveDrift` gives on the same answers, per model,
upstream and output column: the primary's window is its own reference (PSI 0), a shadow or
canary with other weights is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from sidecar.config.canary import CanaryConfig
from sidecar.config.file import Config, DriftConfig, PrimaryConfig, RecordingConfig, ShadowConfig
from sidecar.config.overrides import load
from sidecar.drift import LiveDrift, Profile

from ..conftest import ModelServer
from ..support import RunningSidecar, settings, wait_until

COLUMNS = [f"OUTPUT__0[{i}]" for i in range(10)] + ["OUTPUT__0.top1"]


def infer(url: str, rows: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        inputs = [httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows)
        return client.infer("classifier", inputs).as_numpy("OUTPUT__0")
    finally:
        client.close()


@pytest.fixture(scope="module")
def reference(serve_v1: ModelServer, points: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profile of version 1's answers to the test points, as `shadowserve-drift profile` writes it."""
    profile = Profile.from_arrays({"OUTPUT__0": infer(serve_v1.http, points)})
    profile.source["model"] = "classifier"
    path = tmp_path_factory.mktemp("drift") / "reference.json"
    profile.save(path)
    return path


def send(sidecar: RunningSidecar, points: np.ndarray) -> None:
    for start in range(0, len(points), 8):
        infer(sidecar.http, points[start:start + 8])


def expected(reference: Path, answers: np.ndarray) -> dict[str, tuple[float | None, float | None]]:
    live = LiveDrift(Profile.load(reference), window=1000)
    live.observe({"OUTPUT__0": answers})
    return {name: (value.psi, value.js) for name, value in live.snapshot().items()}


def gauges(sidecar: RunningSidecar, upstream: str) -> dict[str, tuple[float, float]]:
    labels = {"model": "classifier", "upstream": upstream}
    return {column: (sidecar.metric("sidecar_live_drift_psi", output=column, **labels),
                     sidecar.metric("sidecar_live_drift_js", output=column, **labels)) for column in COLUMNS}


def counted(sidecar: RunningSidecar, upstream: str, count: int) -> bool:
    return sidecar.metric("sidecar_live_drift_window_predictions", model="classifier", upstream=upstream,
                          output="OUTPUT__0.top1") == count


def test_gauges_per_upstream_match_the_library(serve_v1: ModelServer, serve_v2: ModelServer, points: np.ndarray,
                                               reference: Path) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    shadows=(ShadowConfig("v2", http=serve_v2.http_url),),
                    drift=DriftConfig(reference, window=1000))
    sidecar = RunningSidecar(config, grpc_listen=None)
    try:
        send(sidecar, points)
        wait_until(lambda: counted(sidecar, "primary", len(points)) and counted(sidecar, "v2", len(points)), 20,
                   "both windows to fill")
        primary, shadow = gauges(sidecar, "primary"), gauges(sidecar, "v2")
        status = sidecar.sidecar.status()["drift"]
    finally:
        sidecar.stop()
    want_primary = expected(reference, infer(serve_v1.http, points))
    want_shadow = expected(reference, infer(serve_v2.http, points))
    assert set(want_primary) == set(COLUMNS)
    assert {c: pytest.approx(v, abs=1e-12) for c, v in want_primary.items()} == primary
    assert {c: pytest.approx(v, abs=1e-12) for c, v in want_shadow.items()} == shadow
    assert all(psi == pytest.approx(0, abs=1e-12) for psi, _ in primary.values())  # its own reference
    assert shadow["OUTPUT__0.top1"][0] > 0.1  # other weights: other predictions
    assert status["model"] == "classifier" and status["window"] == 1000
    assert {(v["upstream"], v["output"]) for v in status["values"]} == {(u, c) for u in ("primary", "v2")
                                                                          for c in COLUMNS}


def test_without_copies_the_answers_are_observed_but_not_recorded(serve_v1: ModelServer, points: np.ndarray,
                                                                  reference: Path, tmp_path: Path) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    recording=RecordingConfig(dir=tmp_path / "records"), drift=DriftConfig(reference, window=1000))
    sidecar = RunningSidecar(config, grpc_listen=None)
    try:
        send(sidecar, points[:32])
        wait_until(lambda: counted(sidecar, "primary", 32), 20, "the primary's window")
    finally:
        sidecar.stop()
    assert not list((tmp_path / "records").glob("*.parquet"))  # nothing was mirrored: no records
    assert sidecar.metric("sidecar_records_written_total") == 0


def test_the_canary_and_the_primary_copies_have_windows_of_their_own(serve_v1: ModelServer, serve_v2: ModelServer,
                                                                     points: np.ndarray, reference: Path) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    canary=CanaryConfig(http=serve_v2.http_url, weight=100.0),
                    drift=DriftConfig(reference, window=1000))
    sidecar = RunningSidecar(config, grpc_listen=None)
    try:
        send(sidecar, points)
        wait_until(lambda: counted(sidecar, "canary", len(points)) and counted(sidecar, "primary", len(points)), 20,
                   "the canary's and the copies' windows")
        canary, primary = gauges(sidecar, "canary"), gauges(sidecar, "primary")
    finally:
        sidecar.stop()
    for got, want in ((canary, expected(reference, infer(serve_v2.http, points))),
                      (primary, expected(reference, infer(serve_v1.http, points)))):
        assert {c: pytest.approx(v, abs=1e-12) for c, v in want.items()} == got


def test_a_profile_that_cannot_be_read_is_refused(serve_v1: ModelServer, reference: Path, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"primary: {{http: '{serve_v1.http_url}', grpc: null}}\ndrift: {{profile: '{reference}'}}\n")
    options = {"config_file": path, "grpc_listen": None}
    sidecar = RunningSidecar(load(settings(**options)), **options)
    try:
        hub = sidecar.sidecar.recorder.drift
        assert hub is not None
        (tmp_path / "bad.json").write_text('{"format": "something else"}')
        path.with_suffix(".new").write_text(path.read_text().replace(str(reference), str(tmp_path / "bad.json")))
        path.with_suffix(".new").replace(path)
        wait_until(lambda: sidecar.metric("sidecar_config_reloads_total", result="rejected") == 1, 10, "a refusal")
        assert sidecar.sidecar.recorder.drift is hub and sidecar.sidecar.config.drift == DriftConfig(reference)
    finally:
        sidecar.stop()
