"""Every v2 datatype through a handler and back, as JSON and as binary tensors."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from inference_protocol.datatypes import DATATYPES

from .conftest import RunningServer, write_model

CONFIG_TYPES = {dt: "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}" for dt in DATATYPES}

IDENTITY = '''
import torch
import serving


class Identity(serving.Model):
    def predict(self, inputs):
        out = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                assert value.device == self.device
                if name == "IN_BF16":
                    assert value.dtype == torch.bfloat16
            out["OUT" + name[2:]] = value
        return out
'''


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", "é".encode(), b""], [b"zz", b"x" * 300, b"\\n"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BF16":  # tritonclient carries BF16 as ml_dtypes.bfloat16 (one of its dependencies)
        return np.array([[1.0, -2.5, 0.0], [3.140625, 256.0, -0.5]], dtype=ml_dtypes.bfloat16)
    dtype = np.dtype(datatype.lower().replace("fp", "float").replace("uint", "uint").replace("int", "int"))
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [info.max, 2, 3]], dtype=dtype)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("identity")
    inputs = ",\n".join(f'{{ name: "IN_{dt}" data_type: {CONFIG_TYPES[dt]} dims: [ 3 ] optional: true }}'
                        for dt in DATATYPES)
    outputs = ",\n".join(f'{{ name: "OUT_{dt}" data_type: {CONFIG_TYPES[dt]} dims: [ 3 ] }}' for dt in DATATYPES)
    write_model(repo, "identity", f"""
        backend: "python"
        max_batch_size: 4
        input [ {inputs} ]
        output [ {outputs} ]
        """, {1: {"model.py": IDENTITY}})
    server = RunningServer(repo)
    yield server
    server.stop()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_round_trip(server: RunningServer, datatype: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.url)
    data = sample(datatype)
    inp = httpclient.InferInput(f"IN_{datatype}", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary or datatype == "BF16")  # tritonclient: BF16 only as binary
    out = httpclient.InferRequestedOutput(f"OUT_{datatype}", binary_data=binary)
    result = client.infer("identity", [inp], outputs=[out])
    got = result.as_numpy(f"OUT_{datatype}")
    if datatype == "BYTES":
        got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
        assert got.tolist() == data.tolist()
    else:
        assert got.shape == data.shape
        np.testing.assert_array_equal(got.astype(data.dtype), data)


def test_bf16_in_json_is_rounded_from_floats(server: RunningServer) -> None:
    body = orjson.dumps({"inputs": [{"name": "IN_BF16", "datatype": "BF16", "shape": [1, 3],
                                     "data": [1.0, 3.14159, -0.0001]}], "outputs": [{"name": "OUT_BF16"}]})
    request = urllib.request.Request(f"http://{server.url}/v2/models/identity/infer", data=body, method="POST")
    result = orjson.loads(urllib.request.urlopen(request, timeout=10).read())
    assert result["outputs"][0]["datatype"] == "BF16"
    expected = np.array([1.0, 3.14159, -0.0001], dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.array(result["outputs"][0]["data"], dtype=np.float32), expected)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_transport_gives_identical_outputs(server: RunningServer, datatype: str) -> None:
    import tritonclient.grpc as grpcclient

    data = sample(datatype)
    got: dict[str, object] = {}
    for transport, module, url in (("http-json", httpclient, server.url), ("http-binary", httpclient, server.url),
                                   ("grpc", grpcclient, f"127.0.0.1:{server.server.grpc_port}")):
        client = module.InferenceServerClient(url)
        inp = module.InferInput(f"IN_{datatype}", list(data.shape), datatype)
        out = module.InferRequestedOutput(f"OUT_{datatype}")
        if module is httpclient:
            as_json = transport == "http-json"
            inp.set_data_from_numpy(data, binary_data=not as_json or datatype == "BF16")
            out = httpclient.InferRequestedOutput(f"OUT_{datatype}", binary_data=not as_json)
        else:
            inp.set_data_from_numpy(data)
        array = client.infer("identity", [inp], outputs=[out]).as_numpy(f"OUT_{datatype}")
        if datatype == "BYTES":
            got[transport] = [v.encode() if isinstance(v, str) else v for v in array.reshape(-1)]
        else:
            got[transport] = (array.shape, array.astype(data.dtype).tobytes())
    assert got["http-json"] == got["http-binary"] == got["grpc"]
    expected = data.reshape(-1).tolist() if datatype == "BYTES" else (data.shape, data.tobytes())
    assert got["grpc"] == expected
