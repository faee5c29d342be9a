"""tests/otlp.py, the OTLP receiver the tracing tests use: the SDK's own exporters, both protocols."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

from tests.otlp import Receiver


def exporter(receiver: Receiver, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        return GrpcExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=2)
    return HttpExporter(endpoint=receiver.http_endpoint, timeout=2)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_arrive_decoded(protocol: str) -> None:
    with Receiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "probe"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter(receiver, protocol)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer", kind=trace.SpanKind.SERVER, attributes={"n": 3, "s": "x"}) as outer:
            outer.add_event("queued", {"depth": 2})
            with tracer.start_as_current_span("inner", links=[trace.Link(outer.get_span_context())]) as inner:
                inner.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        provider.shutdown()
        [got_outer] = receiver.wait_for(name="outer")
        [got_inner] = receiver.wait_for(name="inner")
    context = outer.get_span_context()
    assert got_outer.kind == "SERVER" and got_outer.service == "probe"
    assert got_outer.trace_id == f"{context.trace_id:032x}" and got_outer.span_id == f"{context.span_id:016x}"
    assert got_outer.parent_span_id == "" and got_outer.attributes == {"n": 3, "s": "x"}
    assert [(e.name, e.attributes) for e in got_outer.events] == [("queued", {"depth": 2})]
    assert got_inner.kind == "INTERNAL" and got_inner.parent_span_id == got_outer.span_id
    assert [(link.trace_id, link.span_id) for link in got_inner.links] == [(got_outer.trace_id, got_outer.span_id)]
    assert (got_inner.status, got_inner.status_message) == ("ERROR", "boom")
    assert receiver.exports == 2


@pytest.mark.parametrize("behaviour", ["refuse", "hang"])
def test_a_misbehaving_receiver_keeps_nothing(behaviour: str) -> None:
    with Receiver(behaviour) as receiver:  # type: ignore[arg-type]  # the literal, parametrized
        result = GrpcExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=0.3).export([])
        assert receiver.spans() == [] and receiver.exports >= 1
    assert result.name == "FAILURE"


def test_a_body_that_is_not_protobuf_is_refused() -> None:
    with Receiver() as receiver:
        request = urllib.request.Request(receiver.http_endpoint, data=b"\xff\x00garbage", method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 400 and receiver.spans() == []


def test_wait_for_says_what_arrived_when_it_gives_up() -> None:
    with Receiver() as receiver, pytest.raises(AssertionError, match=r"0 of 1 matching .*received: nothing"):
        receiver.wait_for(name="never", timeout=0.05)
