"""The same TorchScript model in the KServe ModelServer (a ``kserve.Model`` subclass), v2 protocol.

    python kserve_server.py --model_path model.pt --http_port 8080 --grpc_port 8081

KServe's own flags (--http_port, --grpc_port, --enable_grpc, ...) are read by kserve itself.
The uvicorn access log is silenced, so that no server in the benchmark logs each request.
BENCH_TORCH_THREADS sets torch's threads, as serve's --cpu-threads does.
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse


class Classifier(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
        self.module = torch.jit.load(self.path, map_location="cpu").eval()
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        array = payload.inputs[0].as_numpy()
        with torch.inference_mode():
            scores = self.module(torch.from_numpy(array)).numpy()
        output = InferOutput(name="OUTPUT__0", shape=list(scores.shape), datatype="FP32", data=scores)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    server = kserve.ModelServer()  # configures logging
    # No per-request access log, as in serve (latency logging: --enable_latency_logging false).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start([Classifier(args.model_name, args.model_path)])
