"""One trace from the client through the sidecar to serve: the primary's call and every shadow copy.

A real ``serve`` exports its spans to the OTLP receiver of `tests.otlp` (switched on by the
``OTEL_*`` variables, as in production); so does the sidecar, in-process (its `Tracing` built
on the same OTLP exporter) and as ``python -m sidecar`` (configured from the environment at
start-up). The client sends its own ``traceparent``; the test follows the parent ids from the
client's span to the sidecar's request span, its CLIENT spans, and serve's spans under them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from unittest import mock

import aiohttp
import grpc
import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.tracing import Tracing
from sidecar.app import Sidecar, start
from sidecar.config.canary import CanaryConfig
from sidecar.config.file import Config, PrimaryConfig, ShadowConfig
from sidecar.spans import FLUSH_SECS
from tests.otlp import Receiver, Span

from .conftest import ModelServer, _repository
from .doubles import Doubles
from .support import ROOT, LoopThread, SidecarProcess, free_port, settings

BODY = (b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": ['
        + b", ".join([b"0.25"] * 64) + b"]}]}")
INFER = "/v2/models/classifier/infer"
HTTP_SPAN = "POST /v2/models/{model}/infer"
GRPC_SPAN = "inference.GRPCInferenceService/ModelInfer"


def traceparent() -> tuple[str, str, str]:
    """A client's own context: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_serve(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """One serve, exporting its spans to the receiver: the sidecar's primary and its shadow alike."""
    with mock.patch.dict(os.environ, receiver.env("http/protobuf")):
        server = ModelServer(_repository(tmp_path_factory.mktemp("traced"), 1))
    yield server
    server.stop()


class TracedSidecar:
    """An in-process sidecar whose spans go to ``receiver`` over OTLP/HTTP, as a configured one's do."""

    def __init__(self, receiver: Receiver, config: Config) -> None:
        provider = TracerProvider(resource=Resource.create({"service.name": "sidecar"}))
        exporter = OTLPSpanExporter(endpoint=receiver.http_endpoint, timeout=2)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20))
        self.tracing = Tracing(provider, "sidecar")
        self.loop = LoopThread("traced-sidecar")
        self.sidecar: Sidecar = self.loop.call(start(settings(), config, CollectorRegistry(), self.tracing))
        self.http = f"http://127.0.0.1:{self.sidecar.http_port}"
        self.grpc = f"127.0.0.1:{self.sidecar.grpc_port}"

    def post(self, headers: dict[str, str]) -> tuple[int, bytes]:
        async def send() -> tuple[int, bytes]:
            async with aiohttp.ClientSession() as session, session.post(
                    self.http + INFER, data=BODY, headers={"Content-Type": "application/json", **headers}) as response:
                return response.status, await response.read()
        return self.loop.call(send())

    def stop(self) -> None:
        try:
            self.loop.call(self.sidecar.stop())
        finally:
            self.loop.close()
            self.tracing.shutdown()


def one(spans: list[Span]) -> Span:
    assert len(spans) == 1, spans
    return spans[0]


def child(receiver: Receiver, parent: Span, service: str, kind: str, name: str | None = None) -> Span:
    """The one span of ``service`` (of ``kind``, called ``name``) whose parent is ``parent``."""
    return one(receiver.wait_for(lambda s: s.parent_span_id == parent.span_id and s.service == service
                                 and s.kind == kind and (name is None or s.name == name)))


def test_one_trace_from_the_client_through_the_sidecar_to_the_primary_and_the_shadow(
        receiver: Receiver, traced_serve: ModelServer) -> None:
    config = Config(primary=PrimaryConfig(http=traced_serve.http_url, grpc=traced_serve.grpc),
                    shadows=(ShadowConfig("copy", http=traced_serve.http_url, grpc=traced_serve.grpc),))
    sidecar = TracedSidecar(receiver, config)
    try:
        header, trace_id, client_span = traceparent()
        status, body = sidecar.post({"traceparent": header, "tracestate": "client=1"})
        assert status == 200 and b"OUTPUT__0" in body
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=HTTP_SPAN))
        assert request.kind == "SERVER" and request.parent_span_id == client_span
        assert request.attributes["http.response.status_code"] == 200
        assert request.attributes["http.route"] == "/v2/models/{model}/infer"
        assert request.attributes["triton.model_name"] == "classifier"
        primary = child(receiver, request, "sidecar", "CLIENT", f"primary {HTTP_SPAN}")
        shadow = child(receiver, request, "sidecar", "CLIENT", f"shadow copy {HTTP_SPAN}")
        assert shadow.attributes["shadowserve.role"] == "shadow" and shadow.status != "ERROR"
        # serve's own spans join the trace under each of the sidecar's calls
        for call in (primary, shadow):
            served = child(receiver, call, "serve", "SERVER")
            assert served.trace_id == trace_id
        assert primary.start_unix_nano >= request.start_unix_nano and primary.end_unix_nano <= request.end_unix_nano

        # the same over gRPC: metadata in, metadata upstream
        header, trace_id, client_span = traceparent()
        infer = service_pb2.ModelInferRequest(model_name="classifier", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="INPUT__0", datatype="FP32", shape=[1, 64])],
            raw_input_contents=[np.full((1, 64), 0.25, np.float32).tobytes()])
        with grpc.insecure_channel(sidecar.grpc) as channel:
            answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer, metadata=(("traceparent", header),), timeout=30)
        assert answer.outputs[0].name == "OUTPUT__0"
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=GRPC_SPAN))
        assert request.kind == "SERVER" and request.parent_span_id == client_span
        assert request.attributes["rpc.system"] == "grpc" and request.attributes["rpc.grpc.status_code"] == 0
        for name in (f"primary {GRPC_SPAN}", f"shadow copy {GRPC_SPAN}"):
            call = child(receiver, request, "sidecar", "CLIENT", name)
            assert child(receiver, call, "serve", "SERVER").trace_id == trace_id

        # an error the primary answers is the client's status on both spans
        header, trace_id, _ = traceparent()
        infer.model_name = "absent"
        with grpc.insecure_channel(sidecar.grpc) as channel, pytest.raises(grpc.RpcError) as failed:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer, metadata=(("traceparent", header),), timeout=30)
        code = failed.value.code()
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=GRPC_SPAN))
        call = child(receiver, request, "sidecar", "CLIENT", f"primary {GRPC_SPAN}")
        assert request.attributes["rpc.grpc.status_code"] == call.attributes["rpc.grpc.status_code"] == code.value[0]
        assert call.status == "ERROR" and call.attributes["error.type"] == code.name
    finally:
        sidecar.stop()


def test_a_failed_canary_and_its_retry_are_two_calls_and_a_stream_is_one(
        receiver: Receiver, traced_serve: ModelServer) -> None:
    canary = CanaryConfig(http=f"http://127.0.0.1:{free_port()}", grpc=None, weight=100.0, copy_fraction=0.0)
    sidecar = TracedSidecar(receiver, Config(primary=PrimaryConfig(http=traced_serve.http_url,
                                                                   grpc=traced_serve.grpc), canary=canary))
    try:
        header, trace_id, _ = traceparent()
        assert sidecar.post({"traceparent": header})[0] == 200  # the canary is down: answered by the primary
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=HTTP_SPAN))
        failed = child(receiver, request, "sidecar", "CLIENT", f"canary {HTTP_SPAN}")
        retried = child(receiver, request, "sidecar", "CLIENT", f"primary {HTTP_SPAN}")
        assert (failed.status, failed.attributes["error.type"]) == ("ERROR", "connection")
        assert retried.attributes["shadowserve.retry"] is True and retried.start_unix_nano >= failed.end_unix_nano
        assert child(receiver, retried, "serve", "SERVER").trace_id == trace_id

        # a stream (the canary serves no gRPC: the primary) is one call for all its messages
        header, trace_id, client_span = traceparent()
        infer = service_pb2.ModelInferRequest(model_name="classifier", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="INPUT__0", datatype="FP32", shape=[1, 64])],
            raw_input_contents=[np.full((1, 64), 0.25, np.float32).tobytes()])
        with grpc.insecure_channel(sidecar.grpc) as channel:
            answers = list(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter([infer, infer]), metadata=(("traceparent", header),), timeout=30))
        assert len(answers) == 2 and all(not a.error_message for a in answers)
        name = "inference.GRPCInferenceService/ModelStreamInfer"
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=name))
        assert request.parent_span_id == client_span and request.attributes["rpc.grpc.status_code"] == 0
        call = child(receiver, request, "sidecar", "CLIENT", f"primary {name}")
        assert receiver.wait_for(lambda s: s.parent_span_id == call.span_id and s.service == "serve")
    finally:
        sidecar.stop()


def test_a_shadow_that_hangs_or_is_down_never_delays_the_primary_or_its_span(
        receiver: Receiver, traced_serve: ModelServer) -> None:
    doubles_loop = LoopThread("doubles")
    doubles = doubles_loop.call(Doubles().start(("blackhole", "refuse")))
    config = Config(primary=PrimaryConfig(http=traced_serve.http_url, grpc=None),
                    shadows=(ShadowConfig("hangs", http=doubles.urls["blackhole"], timeout_secs=1.5),
                             ShadowConfig("down", http=doubles.urls["refuse"], timeout_secs=1.0),
                             ShadowConfig("full", http=doubles.urls["blackhole"], max_in_flight=0)))
    sidecar = TracedSidecar(receiver, config)
    try:
        header, trace_id, _ = traceparent()
        status, _ = sidecar.post({"traceparent": header})
        answered = time.time_ns()
        assert status == 200
        request = one(receiver.wait_for(lambda s: s.trace_id == trace_id and s.service == "sidecar", name=HTTP_SPAN))
        hangs = child(receiver, request, "sidecar", "CLIENT", f"shadow hangs {HTTP_SPAN}")
        assert answered < hangs.end_unix_nano  # the client had its answer before the copy gave up
        down = child(receiver, request, "sidecar", "CLIENT", f"shadow down {HTTP_SPAN}")
        assert request.end_unix_nano < hangs.end_unix_nano  # ended before the copy gave up: never waited on it
        assert (hangs.status, hangs.attributes["error.type"]) == ("ERROR", "timeout")
        assert [e.name for e in hangs.events] == ["shadow.timeout"]
        assert (down.status, down.attributes["error.type"]) == ("ERROR", "connection")
        assert hangs.end_unix_nano - hangs.start_unix_nano >= 1_400_000_000  # its own timeout, 1.5 s
        # the copy never sent (max_in_flight 0) is an event on the request's span
        assert [(e.name, e.attributes) for e in request.events] == [
            ("shadow.skipped", {"shadowserve.upstream": "full", "shadowserve.reason": "max_in_flight"})]
        assert request.status != "ERROR"
    finally:
        sidecar.stop()
        doubles_loop.call(doubles.close())
        doubles_loop.close()


def test_the_sidecar_command_traces_from_the_environment_and_a_stuck_collector_costs_its_stop_little(
        receiver: Receiver, traced_serve: ModelServer) -> None:
    with Receiver() as own:  # the sidecar's own collector (serve's stays the module's): it will get stuck
        # unbounded, the stop would wait for the export's 30 s timeout
        env = {**os.environ, **own.env("grpc", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="30"),
               "SIDECAR_PRIMARY": traced_serve.http_url}
        process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "off", "--metrics-port", "0",
                                 "--drain-timeout-secs", "0", env=env)
        try:
            request = urllib.request.Request(f"http://{process.http}{INFER}", data=BODY, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
            # no traceparent: the sidecar's span is the trace's root, and serve's is under its call
            root = one(own.wait_for(lambda s: s.service == "sidecar" and s.parent_span_id == "", name=HTTP_SPAN))
            call = child(own, root, "sidecar", "CLIENT", f"primary {HTTP_SPAN}")
            assert child(receiver, call, "serve", "SERVER").trace_id == root.trace_id
            assert any(entry["message"].startswith("tracing on") for entry in process.lines)
            # now the collector hangs: the next spans' export never returns, and the stop does not wait on it
            own.behaviour = "hang"
            exports = own.exports
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
            deadline = time.monotonic() + 10
            while own.exports == exports and time.monotonic() < deadline:
                time.sleep(0.02)  # the receiver counts an export as it arrives; there is no event to wait on
            assert own.exports > exports
            began = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            assert process.finish(30) == 0
            assert time.monotonic() - began < FLUSH_SECS + 6.0  # the bound, the exit itself on a loaded machine
        finally:
            process.kill()


PROBE = """
import asyncio, json, os, sys
from sidecar.app import main, start
from sidecar.config.file import Config, PrimaryConfig
from tests.sidecar.support import settings

async def proxy_once():
    sidecar = await start(settings(), Config(primary=PrimaryConfig(http='http://127.0.0.1:9', grpc=None)))
    reader, writer = await asyncio.open_connection('127.0.0.1', sidecar.http_port)
    writer.write(b'POST /v2/models/m/infer HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n'
                 b'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\\r\\n\\r\\n{}')
    assert (await reader.readline()).startswith(b'HTTP/1.1 503')
    writer.close()
    await sidecar.stop()

asyncio.run(proxy_once())
loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))
assert not loaded, loaded
# a setting the tracing cannot honour stops the command before it listens, with one line
os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT='http://127.0.0.1:4318', OTEL_TRACES_EXPORTER='zipkin')
try:
    main(['--listen', '127.0.0.1:0', '--grpc-listen', 'off', '--metrics-port', '0', '--log-format', 'json',
          '--admin-listen', 'off'])
except SystemExit as stopped:
    print(json.dumps({'exit': stopped.code}))
"""


def test_off_imports_nothing_of_opentelemetry_and_a_bad_setting_stops_start_up_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"exit": 2}
    errors = [json.loads(line)["message"] for line in result.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "error"]
    # which settings are bad is serving.tracing's to say (tests/test_tracing*.py); the sidecar stops on one
    assert len(errors) == 1 and errors[0].startswith("invalid tracing configuration: OTEL_TRACES_EXPORTER")
