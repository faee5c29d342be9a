"""serve --model-repository s3://...: a repository on a real S3 API (moto's server), served and polled."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.storage_urls import parse_store_url

from .conftest import ROOT, RunningServer, write_model
from .storage_server import MotoS3, aws_env, moto_s3

__all__ = ["aws_env", "moto_s3"]  # fixtures, used by name

SIMPLE = ROOT / "tests" / "fixtures" / "models" / "simple"
SCALE = '''
import serving


class Scale(serving.Model):
    def predict(self, inputs):
        return {"Y": inputs["X"] * FACTOR}
'''


def scale_model(repository: Path, versions: dict[int, float], max_batch_size: int = 8) -> None:
    write_model(repository, "scale", f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        """, {v: {"model.py": SCALE.replace("FACTOR", repr(factor))} for v, factor in versions.items()})


def scale(client: httpclient.InferenceServerClient) -> list[float]:
    x = httpclient.InferInput("X", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0]], np.float32))
    return [float(v) for v in client.infer("scale", [x]).as_numpy("Y")[0]]


def index(client: httpclient.InferenceServerClient) -> dict[str, str]:
    return {f"{row['name']}/{row.get('version', '')}": row["state"] for row in client.get_model_repository_index()}


@pytest.fixture()
def bucket(moto_s3: MotoS3, request: pytest.FixtureRequest) -> Iterator[str]:
    name = moto_s3.bucket(f"repo-{abs(hash(request.node.nodeid)) % 10**10}")
    yield name
    moto_s3.delete_prefix(name, "")


@pytest.fixture(autouse=True)
def quiet_moto() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


def serve(moto_s3: MotoS3, bucket: str, cache: Path, **overrides: object) -> RunningServer:
    return RunningServer(parse_store_url(moto_s3.url(bucket, "models")), model_cache_dir=cache,  # type: ignore[arg-type]
                         model_repository_timeout_secs=5.0, **overrides)


def test_serves_a_repository_from_s3(moto_s3: MotoS3, bucket: str, tmp_path: Path, aws_env: None) -> None:
    local = tmp_path / "local"
    scale_model(local, {1: 3.0})
    moto_s3.put_tree(bucket, "models/scale", local / "scale")
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    moto_s3.put(bucket, "models/README.md", "files at the top level belong to no model")
    server = serve(moto_s3, bucket, tmp_path / "cache")
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert index(client) == {"scale/1": "READY", "simple/1": "READY"}
        assert scale(client) == [3.0, 6.0]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
        a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), np.int32)
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = grpc.infer("simple", inputs)
        assert (result.as_numpy("OUTPUT0") == a + b).all() and (result.as_numpy("OUTPUT1") == a - b).all()
        grpc.close()
        # the copy is a plain model repository under the cache; nothing else was written
        assert server.server.repository is not None
        assert sorted(p.name for p in server.server.repository.root.iterdir()) == [".fetched", "scale", "simple"]
    finally:
        server.stop()


def test_an_onnx_classifier_from_s3_answers_as_onnx_runtime_does(moto_s3: MotoS3, bucket: str, tmp_path: Path,
                                                                 aws_env: None) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from .backends import onnx_models

    model = onnx_models.classifier(seed=3)
    # Triton's shortest config: the platform; inputs, outputs and batching are completed from the model
    moto_s3.put(bucket, "models/classifier/config.pbtxt", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    moto_s3.put(bucket, "models/classifier/1/model.onnx", model)
    server = serve(moto_s3, bucket, tmp_path / "cache")
    try:
        x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
        request = httpclient.InferInput("INPUT", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        probs = httpclient.InferenceServerClient(server.url).infer("classifier", [request]).as_numpy("PROBS")
        expected = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["PROBS"], {"INPUT": x})
        np.testing.assert_allclose(probs, expected[0], rtol=1e-6)
    finally:
        server.stop()


def test_poll_fetches_what_changed_and_removes_deleted_models(moto_s3: MotoS3, bucket: str, tmp_path: Path,
                                                              aws_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serving.storage")
    local = tmp_path / "local"
    scale_model(local, {1: 3.0})
    moto_s3.put_tree(bucket, "models/scale", local / "scale")
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    # a long poll interval: each poll is driven by the test, not by a timer
    server = serve(moto_s3, bucket, tmp_path / "cache", model_control_mode="poll", repository_poll_secs=3600.0)
    try:
        client = httpclient.InferenceServerClient(server.url)
        repository = server.server.repository
        assert repository is not None and server.server.control is not None
        simple_v1 = repository.models["simple"].versions[1]

        def poll() -> None:
            caplog.clear()
            server.call(server.server.control.poll_once())  # type: ignore[union-attr]  # asserted above

        poll()  # nothing changed: nothing fetched
        assert not [r for r in caplog.records if "fetched" in r.getMessage()]

        scale_model(local, {1: 3.0, 2: 5.0})  # a new version: its one file is fetched, the rest linked
        moto_s3.put(bucket, "models/scale/2/model.py", (local / "scale" / "2" / "model.py").read_bytes())
        poll()
        assert "model scale: fetched 1 file(s)" in caplog.text and "2 unchanged" in caplog.text
        assert scale(client) == [5.0, 10.0] and index(client)["scale/2"] == "READY"
        assert repository.models["simple"].versions[1] is simple_v1  # another model's change leaves it untouched

        scale_model(local, {1: 3.0, 2: 5.0}, max_batch_size=4)  # a changed config reloads the model
        moto_s3.put(bucket, "models/scale/config.pbtxt", (local / "scale" / "config.pbtxt").read_bytes())
        poll()
        assert client.get_model_config("scale")["max_batch_size"] == 4 and scale(client) == [5.0, 10.0]

        moto_s3.delete_prefix(bucket, "models/simple/")  # a deleted model leaves the cache and unloads
        poll()
        with pytest.raises(InferenceServerException, match=r"unknown model|not"):
            client.get_model_metadata("simple")
        assert index(client)["simple/1"] == "UNAVAILABLE" and not (repository.root / "simple").exists()
        fetched = repository.root / ".fetched"
        assert len(list(fetched.iterdir())) == 1  # the replaced copies are gone too, once the scan moved on
    finally:
        server.stop()


def test_a_restart_fetches_only_what_changed(moto_s3: MotoS3, bucket: str, tmp_path: Path, aws_env: None,
                                             caplog: pytest.LogCaptureFixture) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    cache = tmp_path / "cache"
    serve(moto_s3, bucket, cache).stop()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="serving.storage"):
        server = serve(moto_s3, bucket, cache)
    try:
        assert not [r for r in caplog.records if "fetched" in r.getMessage()]
        assert index(httpclient.InferenceServerClient(server.url)) == {"simple/1": "READY"}
    finally:
        server.stop()


def test_explicit_load_fetches_the_model_first(moto_s3: MotoS3, bucket: str, tmp_path: Path, aws_env: None) -> None:
    local = tmp_path / "local"
    scale_model(local, {1: 3.0})
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    server = serve(moto_s3, bucket, tmp_path / "cache", model_control_mode="explicit")
    try:
        client = httpclient.InferenceServerClient(server.url)
        moto_s3.put_tree(bucket, "models/scale", local / "scale")  # added after start-up
        client.load_model("scale")
        assert scale(client) == [3.0, 6.0]
        moto_s3.delete_prefix(bucket, "models/scale/")
        with pytest.raises(InferenceServerException, match=r"scale/config\.pbtxt"):
            client.load_model("scale")
    finally:
        server.stop()


def test_aws_endpoint_url_points_a_plain_s3_url_at_another_server(moto_s3: MotoS3, bucket: str, tmp_path: Path,
                                                                  aws_env: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    moto_s3.put_tree(bucket, "models/simple", SIMPLE)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)  # the SDK's own variable, as Triton's SDK reads it
    server = RunningServer(parse_store_url(f"s3://{bucket}/models"), model_cache_dir=tmp_path / "cache",  # type: ignore[arg-type]
                           model_repository_timeout_secs=5.0)
    try:
        assert index(httpclient.InferenceServerClient(server.url)) == {"simple/1": "READY"}
    finally:
        server.stop()


def test_the_poller_follows_the_store_by_itself(moto_s3: MotoS3, bucket: str, tmp_path: Path, aws_env: None) -> None:
    local = tmp_path / "local"
    scale_model(local, {1: 3.0})
    moto_s3.put_tree(bucket, "models/scale", local / "scale")
    server = serve(moto_s3, bucket, tmp_path / "cache", model_control_mode="poll", repository_poll_secs=0.2)
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert scale(client) == [3.0, 6.0]
        scale_model(local, {1: 3.0, 2: 7.0})
        moto_s3.put(bucket, "models/scale/2/model.py", (local / "scale" / "2" / "model.py").read_bytes())
        deadline = time.monotonic() + 30
        while scale(client) != [7.0, 14.0]:
            assert time.monotonic() < deadline, "version 2 was never served"
            time.sleep(0.05)
    finally:
        server.stop()
