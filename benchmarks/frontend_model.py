"""Triton's add/sub ``simple`` model for serve and for Triton, and the two h2load request bodies.

Every front-end measurement (benchmarks/frontend.py, and anyone profiling the hot paths) uses
this one model: inputs ``INPUT0`` and ``INPUT1``, INT32 ``[16]``; outputs ``OUTPUT0 = INPUT0 +
INPUT1`` and ``OUTPUT1 = INPUT0 - INPUT1``; ``max_batch_size: 64``, dynamic batching with a 200 µs
queue delay, one CPU instance. serve runs it as TorchScript, Triton with its Python backend
(numpy). ``python benchmarks/frontend.py --write-repository DIR`` writes ``DIR/serve`` and
``DIR/triton``; ``--write-requests DIR`` writes ``DIR/infer.grpc`` (a gRPC length-prefixed
``ModelInferRequest``, for ``h2load -d``) and ``DIR/infer.json`` (a v2 JSON body).
"""

from __future__ import annotations

import io
import json
import struct
import textwrap
from pathlib import Path

import numpy as np

MODEL = "simple"
DIMS = 16
# Triton's own simple example sends these: 0..15 and ones.
INPUT0 = np.arange(DIMS, dtype=np.int32)
INPUT1 = np.ones(DIMS, dtype=np.int32)
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
HTTP_PATH = f"/v2/models/{MODEL}/infer"

_TENSORS = """\
    max_batch_size: 64
    input [
      { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
      { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
    ]
    output [
      { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
      { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
    ]
    dynamic_batching { max_queue_delay_microseconds: 200 }
    instance_group [ { count: 1, kind: KIND_CPU } ]
"""

SERVE_CONFIG = f'name: "{MODEL}"\nplatform: "pytorch_libtorch"\n' + textwrap.dedent(_TENSORS)
TRITON_CONFIG = f'name: "{MODEL}"\nbackend: "python"\n' + textwrap.dedent(_TENSORS)

# Triton's Python backend API, one response per request: the test suite's copy of Triton's simple model.py
TRITON_MODEL_PY = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "triton" / "simple" / "1"
                   / "model.py").read_text()


def torchscript_add_sub() -> bytes:
    """The TorchScript file serve loads: forward(INPUT0, INPUT1) -> (sum, difference), by position."""
    import torch  # here, so that writing the request bodies needs no torch

    class AddSub(torch.nn.Module):
        def forward(self, input0: torch.Tensor, input1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return input0 + input1, input0 - input1

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(AddSub()), buffer)
    return buffer.getvalue()


def write_repository(directory: Path) -> tuple[Path, Path]:
    """Write ``directory/serve`` (TorchScript) and ``directory/triton`` (Python backend); returns both."""
    serve, triton = directory / "serve", directory / "triton"
    for root, config, name, content in ((serve, SERVE_CONFIG, "model.pt", torchscript_add_sub()),
                                        (triton, TRITON_CONFIG, "model.py", TRITON_MODEL_PY.encode())):
        version = root / MODEL / "1"
        version.mkdir(parents=True, exist_ok=True)
        (root / MODEL / "config.pbtxt").write_text(config)
        (version / name).write_bytes(content)
    return serve, triton


def grpc_message() -> bytes:
    """A serialized ``ModelInferRequest`` for ``simple``: one row of each input as raw little-endian bytes."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, DIMS])
    for name in ("OUTPUT0", "OUTPUT1"):
        request.outputs.add(name=name)
    request.raw_input_contents.extend([INPUT0.astype("<i4").tobytes(), INPUT1.astype("<i4").tobytes()])
    return request.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: a 0 byte (not compressed), the 4-byte big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def unframe(frame: bytes) -> bytes:
    """The message inside one length-prefixed frame; ValueError when the frame is not exactly one."""
    if len(frame) < 5 or frame[0] != 0:
        raise ValueError("not an uncompressed gRPC frame: it must start with a 0 byte and a 4-byte length")
    (length,) = struct.unpack(">I", frame[1:5])
    if length != len(frame) - 5:
        raise ValueError(f"the frame declares {length} bytes but carries {len(frame) - 5}")
    return frame[5:]


def json_body() -> bytes:
    """The v2 JSON request for ``simple``: one row of each input, both outputs."""
    body = {"inputs": [{"name": name, "datatype": "INT32", "shape": [1, DIMS], "data": values.tolist()}
                       for name, values in (("INPUT0", INPUT0), ("INPUT1", INPUT1))],
            "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1"}]}
    return json.dumps(body, separators=(",", ":")).encode()


def write_requests(directory: Path) -> tuple[Path, Path]:
    """Write ``directory/infer.grpc`` and ``directory/infer.json``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    grpc_file, json_file = directory / "infer.grpc", directory / "infer.json"
    grpc_file.write_bytes(grpc_frame(grpc_message()))
    json_file.write_bytes(json_body())
    return grpc_file, json_file


def expected_outputs() -> dict[str, list[int]]:
    """What every server must answer to these requests, one row each."""
    return {"OUTPUT0": (INPUT0 + INPUT1).tolist(), "OUTPUT1": (INPUT0 - INPUT1).tolist()}
