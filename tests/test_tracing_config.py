"""serving.tracing: switched on by OTEL_* only, every setting checked, a flush bounded in time."""

from __future__ import annotations

import ast
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving import tracing
from serving.tracing_env import ProcessorSettings
from tests.otlp import Receiver, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def off_afterwards() -> Iterator[None]:
    yield
    tracing.shutdown(0.5)


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
                                     {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
                                     {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_off"}])
def test_off_unless_asked(environ: dict[str, str]) -> None:
    assert tracing.configure("serve", environ) is None and tracing.current() is None


def test_off_imports_nothing_of_opentelemetry() -> None:
    """Only serving.spans imports OpenTelemetry at its top; every other module does so in the code
    that runs once tracing is on (a subprocess importing the server would take seconds to say the same)."""
    for name in ("tracing", "tracing_env", "http", "grpc", "grpc_stream", "dataplane", "instance", "inprocess",
                 "app", "serve", "types", "batching"):  # the modules on tracing's paths
        path = ROOT / "serving" / f"{name}.py"
        for node in ast.parse(path.read_text()).body:  # module level only, including `if` blocks
            for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else \
                    [f"{'.' * inner.level}{inner.module or ''}"] if isinstance(inner, ast.ImportFrom) else []
                guarded = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                heavy = [n for n in names if n.startswith("opentelemetry") or n in (".spans", "serving.spans")]
                assert guarded or not heavy, f"{path.relative_to(ROOT)} imports {heavy} at import time"
    assert "opentelemetry" not in (ROOT / "serving" / "tracing.py").read_text().split("if TYPE_CHECKING:")[0]


@pytest.mark.parametrize(("setting", "message"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unknown exporter 'jaeger'; use one or more of otlp, console, none"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "is not an OTLP endpoint; use a URL such as"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://:4318"}, "is not an OTLP endpoint"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes' is not a sampler this server knows"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
     "OTEL_TRACES_SAMPLER_ARG='1.5' is not valid; use a number from 0 to 1"),
    ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY='soon' is not valid"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE='0' is not valid; use an integer from 1"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
     "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='20' is not valid; use an integer from 1 to 10"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "OTEL_EXPORTER_OTLP_TIMEOUT='-1' is not valid"),
    ({"OTEL_PROPAGATORS": "tracecontext,b4"}, "propagator 'b4' is not installed"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "OTEL_RESOURCE_ATTRIBUTES has 'team'; use key=value pairs"),
])
def test_a_setting_it_cannot_honour_is_one_clear_line(setting: dict[str, str], message: str) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", **setting}
    with pytest.raises(tracing.TracingError) as caught:
        tracing.configure("serve", environ)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert tracing.current() is None


def test_settings_come_from_the_mapping_given() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_SERVICE_NAME": "model-a",
               "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=ml%20ops",
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
               "OTEL_PROPAGATORS": "tracecontext", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    traced = tracing.configure("serve", environ)
    assert traced is not None and tracing.current() is traced
    attributes = traced.provider.resource.attributes
    assert attributes["service.name"] == "model-a" and attributes["team"] == "ml ops"
    assert "0.25" in traced.provider.sampler.get_description()
    assert ProcessorSettings.read(environ).schedule_delay_ms == 100
    carrier: dict[str, str] = {}
    traced.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=False, trace_flags=trace.TraceFlags(1)))))
    assert carrier == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}  # no baggage


def test_the_service_name_defaults_to_the_program() -> None:
    traced = tracing.configure("serve", {"OTEL_TRACES_EXPORTER": "console"})
    assert traced is not None and traced.provider.resource.attributes["service.name"] == "serve"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_shutdown_flushes_what_is_queued(protocol: str) -> None:
    with Receiver() as receiver:  # a long schedule delay: only the flush at shutdown sends the span
        traced = tracing.configure("serve", receiver.env(protocol, OTEL_BSP_SCHEDULE_DELAY="60000"))  # type: ignore[arg-type]
        assert traced is not None
        traced.tracer.start_span("last words").end()
        assert tracing.shutdown() is True
        [span] = receiver.wait_for(name="last words", timeout=5)
    assert span.service == "serve" and tracing.current() is None


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_stuck_collector_holds_a_stop_no_longer_than_the_bound(protocol: str) -> None:
    with Receiver("hang") as receiver:  # unbounded, the stop would wait for the export's 30 s timeout
        traced = tracing.configure("serve", receiver.env(protocol, OTEL_BSP_SCHEDULE_DELAY="60000",  # type: ignore[arg-type]
                                                         OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="30"))
        assert traced is not None
        traced.tracer.start_span("never delivered").end()
        started = time.monotonic()
        assert tracing.shutdown(0.3) is False
        assert time.monotonic() - started < 0.3 + 2.5  # the bound, and slack for a loaded machine
        assert receiver.spans() == []


def test_the_sdks_warnings_come_once_a_minute_not_once_a_span(caplog: pytest.LogCaptureFixture) -> None:
    tracing.configure("serve", {"OTEL_TRACES_EXPORTER": "console"})
    sdk = logging.getLogger(tracing.SDK_LOGGERS[0])
    template = f"Queue full ({secrets.token_hex(4)}), dropping %s."  # a message no other test has sent this minute
    with caplog.at_level(logging.WARNING, logger=sdk.name):
        for _ in range(100):
            sdk.warning(template, "span")
    assert [r.getMessage() for r in caplog.records] == [template % "span"]


def test_extract_takes_any_mapping_of_headers() -> None:
    traced = tracing.configure("serve", {"OTEL_TRACES_EXPORTER": "console"})
    assert traced is not None
    context = traced.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    parent = trace.get_current_span(context).get_span_context()
    assert parent.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and parent.is_remote
    assert not trace.get_current_span(traced.extract({"traceparent": "garbage"})).get_span_context().is_valid
    assert isinstance(TraceContextTextMapPropagator().fields, set)
