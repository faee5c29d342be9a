"""The client's trace id in the records, and ``traceparent`` through the sidecar with tracing on and off.

Two in-process sidecars in front of the same stub primary and stub shadow (aiohttp servers
that answer a v2 response and keep the trace headers each request brought): one traced (its
spans in the SDK's in-memory exporter), one not. Each records to its own directory; the
Parquet segments are read back as users read them (``pyarrow.dataset``). A hypothesis fuzz
sends any ``traceparent`` through both: the client's answer never changes, the untraced
sidecar passes the header on untouched, the traced one always sends a valid one that keeps
the client's trace when the client's was valid.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.tracing import Tracing
from sidecar.app import Sidecar, start
from sidecar.config.file import Config, PrimaryConfig, RecordingConfig, ShadowConfig
from sidecar.records.schema import SCHEMA
from sidecar.spans import client_trace_id, route

from .support import LoopThread, Stub, read_records, settings, wait_until

ANSWER = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [
    {"name": "OUTPUT__0", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]})
TRACE_HEADERS = ("traceparent", "tracestate")
GRPC_ANSWER = service_pb2.ModelInferResponse(model_name="m", model_version="1", outputs=[
    service_pb2.ModelInferResponse.InferOutputTensor(name="OUTPUT__0", datatype="FP32", shape=[1, 2])],
    raw_output_contents=[np.array([[0.25, 0.75]], np.float32).tobytes()])


def body(request_id: str) -> bytes:
    return orjson.dumps({"id": request_id, "inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 2],
                                                      "data": [1.0, 2.0]}]})


class Upstream:
    """A stub v2 model server that keeps, per request id, the trace headers it received."""

    def __init__(self, loop: LoopThread) -> None:
        self.seen: dict[str, dict[str, list[str]]] = {}

        async def infer(request: web.Request) -> web.Response:
            data = orjson.loads(await request.read())
            self.seen[data["id"]] = {name: request.headers.getall(name, []) for name in TRACE_HEADERS}
            return web.Response(body=ANSWER, content_type="application/json")

        def routes(app: web.Application) -> None:
            app.router.add_post("/v2/models/{model}/infer", infer)

        self.stub = Stub(routes, loop)


class GrpcUpstream:
    """The same over gRPC: a ``ModelInfer`` that keeps, per request id, the ``traceparent`` metadata it got."""

    def __init__(self, loop: LoopThread) -> None:
        self.seen: dict[str, list[str]] = {}
        self.server: grpc.aio.Server = loop.call(self._start())
        self.target = f"127.0.0.1:{self.port}"

    async def _start(self) -> grpc.aio.Server:
        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            message = service_pb2.ModelInferRequest.FromString(request)
            self.seen[message.id] = [v for k, v in context.invocation_metadata() or ()
                                     if k == "traceparent" and isinstance(v, str)]
            return GRPC_ANSWER.SerializeToString()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server


class Pair:
    """A traced sidecar and an untraced one, each recording to its own directory."""

    def __init__(self, root: Path) -> None:
        self.loop = LoopThread("tracing-records")
        self.primary, self.shadow = Upstream(self.loop), Upstream(self.loop)
        self.grpc_primary, self.grpc_shadow = GrpcUpstream(self.loop), GrpcUpstream(self.loop)
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(provider, "sidecar")
        self.dirs = {"on": root / "on", "off": root / "off"}
        self.sidecars: dict[str, Sidecar] = {}
        for mode in ("on", "off"):
            config = Config(primary=PrimaryConfig(http=self.primary.stub.url, grpc=self.grpc_primary.target),
                            shadows=(ShadowConfig("copy", http=self.shadow.stub.url, grpc=self.grpc_shadow.target),),
                            recording=RecordingConfig(dir=self.dirs[mode], segment_records=1_000_000))
            self.sidecars[mode] = self.loop.call(start(settings(), config, CollectorRegistry(),
                                                       self.tracing if mode == "on" else None))
        self.session: aiohttp.ClientSession = self.loop.call(self._session())
        self.channels = {mode: grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") for mode, s in self.sidecars.items()}

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def post(self, mode: str, request_id: str, headers: dict[str, str]) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.sidecars[mode].http_port}/v2/models/m/infer"

        async def send() -> tuple[int, bytes]:
            async with self.session.post(url, data=body(request_id), headers=headers) as response:
                return response.status, await response.read()
        return self.loop.call(send())

    def infer(self, mode: str, request_id: str, traceparent: str) -> service_pb2.ModelInferResponse:
        request = service_pb2.ModelInferRequest(id=request_id, model_name="m", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="INPUT__0", datatype="FP32", shape=[1, 2])],
            raw_input_contents=[np.array([[1.0, 2.0]], np.float32).tobytes()])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channels[mode])
        return stub.ModelInfer(request, metadata=(("traceparent", traceparent),), timeout=10)

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.SERVER]

    def stop(self) -> None:
        try:
            for channel in self.channels.values():
                channel.close()
            self.loop.call(self.session.close())
            for sidecar in self.sidecars.values():
                self.loop.call(sidecar.stop())
            self.primary.stub.stop()
            self.shadow.stub.stop()
            for upstream in (self.grpc_primary, self.grpc_shadow):
                self.loop.call(upstream.server.stop(0))
        finally:
            self.loop.close()
            self.tracing.shutdown()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    running = Pair(tmp_path)
    yield running
    running.stop()


def context() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}"


def test_records_carry_the_clients_trace_id_and_the_header_passes_untouched_when_off(pair: Pair) -> None:
    sampled_trace, sampled = context()
    unsampled_trace, unsampled = context()
    sent = {"sampled": {"traceparent": f"{sampled}-01", "tracestate": "vendor=a,other=b"},
            "unsampled": {"traceparent": f"{unsampled}-00"},
            "none": {},
            "invalid": {"traceparent": f"00-{'0' * 32}-{secrets.token_hex(8)}-01"}}
    for mode in ("on", "off"):
        for name, headers in sent.items():
            status, answer = pair.post(mode, f"{mode}-{name}", headers)
            assert (status, answer) == (200, ANSWER)
    off_primary = {k: v for k, v in pair.primary.seen.items() if k.startswith("off-")}
    for name, headers in sent.items():
        expected = {header: [headers[header]] if header in headers else [] for header in TRACE_HEADERS}
        assert off_primary[f"off-{name}"] == expected  # untouched, to the primary and to the shadow alike
        assert pair.shadow.seen[f"off-{name}"] == expected
    for mode in ("on", "off"):
        pair.loop.call(pair.sidecars.pop(mode).stop())  # finishes the segment
    on = {k: r["trace_id"] for k, r in read_records(pair.dirs["on"]).items()}
    off = {k: r["trace_id"] for k, r in read_records(pair.dirs["off"]).items()}
    assert off == {"off-sampled": sampled_trace, "off-unsampled": unsampled_trace, "off-none": None,
                   "off-invalid": None}
    assert on["on-sampled"] == sampled_trace and on["on-unsampled"] == unsampled_trace
    # the sidecar's own trace when the client brought none (or a broken one): the one its span has
    traced = {f"{s.context.trace_id:032x}" for s in pair.server_spans()}
    assert sampled_trace in traced and unsampled_trace not in traced  # not sampled: no span exported
    for name in ("none", "invalid"):
        trace_id = on[f"on-{name}"]
        assert trace_id in traced and trace_id not in (sampled_trace, unsampled_trace)
    for name in sent:
        for upstream in (pair.primary, pair.shadow):
            [forwarded] = upstream.seen[f"on-{name}"]["traceparent"]
            assert client_trace_id(forwarded) == on[f"on-{name}"]
    assert pair.primary.seen["on-sampled"]["tracestate"] == ["vendor=a,other=b"]
    assert pair.primary.seen["on-sampled"]["traceparent"] != [sent["sampled"]["traceparent"]]  # the sidecar's span


def test_segments_written_before_the_column_existed_still_read(tmp_path: Path) -> None:
    old_schema = pa.schema([f for f in SCHEMA if f.name != "trace_id"], metadata=SCHEMA.metadata)
    row: dict[str, Any] = {"request_id": "old", "timestamp": 0, "model": "m", "protocol": "http", "inputs": None,
                           "primary": {"upstream": "primary", "status": 200}, "shadows": []}
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "segment-old.parquet")
    pq.write_table(pa.Table.from_pylist([{**row, "request_id": "new", "trace_id": "ab" * 16}], schema=SCHEMA),
                   tmp_path / "segment-new.parquet")
    rows = ds.dataset(tmp_path, format="parquet", schema=SCHEMA).to_table().to_pylist()
    assert sorted((r["request_id"], r["trace_id"]) for r in rows) == [("new", "ab" * 16), ("old", None)]


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=size, max_size=size)


# Near-valid values (every field's size, case, the version, more fields, blanks around) and any text.
TRACEPARENTS = st.one_of(
    st.builds(lambda v, t, p, f, more: f"{v}-{t}-{p}-{f}{more}", st.sampled_from(["00", "01", "ff", "0g", "cc"]),
              st.one_of(_hex(32), st.just("0" * 32), _hex(31), st.text("0123456789ABCDEF", min_size=32, max_size=32)),
              st.one_of(_hex(16), st.just("0" * 16), _hex(17)), st.sampled_from(["00", "01", "ff", "1"]),
              st.sampled_from(["", "-", "-extra", " ", "\t", "-00-ab", "x"])),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.text(max_size=40).filter(lambda s: s.isprintable()),
)


@fuzzing(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TRACEPARENTS, state=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                                               max_size=40)),
       baggage=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)))
def test_any_traceparent_leaves_the_answer_alone(pair: Pair, value: str, state: str | None,
                                                 baggage: str | None) -> None:
    headers = {"traceparent": value, **({"tracestate": state} if state is not None else {}),
               **({"baggage": baggage} if baggage is not None else {})}
    request_id = secrets.token_hex(8)
    for mode in ("on", "off"):
        assert pair.post(mode, f"{mode}-{request_id}", headers) == (200, ANSWER)
    received = pair.primary.seen[f"off-{request_id}"]["traceparent"]
    assert received == [value.strip(" \t")]  # what HTTP itself allows a hop to change: the blanks around
    assert pair.shadow.seen[f"off-{request_id}"]["traceparent"] == received
    for upstream in (pair.primary, pair.shadow):
        [forwarded] = upstream.seen[f"on-{request_id}"]["traceparent"]
        assert client_trace_id(forwarded) is not None
        if client_trace_id(value) is not None:
            assert client_trace_id(forwarded) == client_trace_id(value)


@fuzzing(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TRACEPARENTS.filter(lambda v: v.isascii() and v.isprintable()))
def test_any_traceparent_metadata_leaves_the_grpc_answer_alone(pair: Pair, value: str) -> None:
    request_id = secrets.token_hex(8)
    for mode in ("on", "off"):
        assert pair.infer(mode, f"{mode}-{request_id}", value) == GRPC_ANSWER
    received = pair.grpc_primary.seen[f"off-{request_id}"]
    assert received == [value]  # gRPC metadata keeps even the blanks around a value
    for upstream in (pair.grpc_primary, pair.grpc_shadow):
        [forwarded] = upstream.seen[f"on-{request_id}"]
        assert client_trace_id(forwarded) is not None
        if client_trace_id(value) is not None:
            assert client_trace_id(forwarded) == client_trace_id(value)
    wait_until(lambda: f"off-{request_id}" in pair.grpc_shadow.seen, 10, "the shadow's copy")
    assert pair.grpc_shadow.seen[f"off-{request_id}"] == received


@given(value=TRACEPARENTS)
def test_the_trace_id_is_read_as_opentelemetry_reads_it(value: str) -> None:
    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    from opentelemetry import trace

    span = trace.get_current_span(context).get_span_context()
    expected = f"{span.trace_id:032x}" if span.is_valid else None
    assert client_trace_id(value) == expected


@pytest.mark.parametrize("path, templated", [
    ("/v2/models/classifier/infer", "/v2/models/{model}/infer"),
    ("/v2/models/c/versions/3/infer", "/v2/models/{model}/versions/{version}/infer"),
    ("/v2/models/c", "/v2/models/{model}"), ("/v2/models/c/ready", "/v2/models/{model}/ready"),
    ("/v2/repository/models/c/load", "/v2/repository/models/{model}/load"),
    ("/v2/systemsharedmemory/region/r/register", "/v2/systemsharedmemory/region/{region}/register"),
    ("/v2/health/ready", "/v2/health/ready"), ("/v2/models//infer", None), ("/v2/models/c/x/y", None),
    ("/metrics", None), ("/", None),
])
def test_span_names_template_the_v2_paths(path: str, templated: str | None) -> None:
    assert route(path) == templated


@given(st.lists(st.sampled_from(["v2", "models", "versions", "repository", "region", "systemsharedmemory", "infer",
                                 "load", "status", "", "x", "{model}"]), max_size=8))
def test_a_span_name_never_holds_what_the_client_named(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    templated = route(path)
    assert templated is None or set(templated.split("/")) <= {
        "", "v2", "models", "versions", "repository", "index", "region", "systemsharedmemory", "cudasharedmemory",
        "infer", "ready", "config", "stats", "load", "unload", "status", "register", "unregister", "health", "live",
        "logging", "trace", "setting", "{model}", "{version}", "{region}"}
    assert templated is None or templated == path or "{" in templated
