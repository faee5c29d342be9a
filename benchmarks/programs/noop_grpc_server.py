"""The gRPC floor: a grpc.aio ModelInfer on uvloop that answers a fixed [1, 10] FP32 output.

It does what every Python gRPC model server must do (HTTP/2, protobuf in and out) and
nothing else, so no server built on grpcio's asyncio API can beat it.

    python benchmarks/programs/noop_grpc_server.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

OUTPUT = bytes(40)  # ten FP32 zeros


class Noop(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="OUTPUT__0", datatype="FP32", shape=[1, 10])
        response.raw_output_contents.append(OUTPUT)
        return response

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)


async def main(host: str, port: int) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Noop(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    # asyncio.Runner is Python 3.11+, as are the interpreters these programs run on; mypy checks for 3.10
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[attr-defined]  # 3.11+, see above
        runner.run(main(args.host, args.port))
