"""The routing plan, without a listener: who serves, who gets copies, the exchange, and what is observed."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.canary.controller import Controller
from sidecar.canary.metrics import CanaryMetrics
from sidecar.config.canary import CanaryConfig
from sidecar.config.file import Config, PrimaryConfig, ShadowConfig
from sidecar.mirror.exchange import Exchange
from sidecar.mirror.metrics import MirrorMetrics
from sidecar.proxy.health import Health
from sidecar.proxy.metrics import ProxyMetrics
from sidecar.proxy.plan import Incoming, Proxy
from sidecar.proxy.upstreams import Upstreams, build
from sidecar.routing import CANARY, PRIMARY

# No gRPC target: a grpc.aio channel needs an event loop, and the plan is told which transport the canary serves.
CANARY_AT_HALF = CanaryConfig("http://127.0.0.1:9", None, weight=50.0, sticky_header="x-user",
                              copy_fraction=0.0)


def proxy(config: Config, protocol: str = "http") -> tuple[Proxy, Upstreams, list[Exchange]]:
    registry = CollectorRegistry()
    upstreams = build(config, MirrorMetrics(registry))
    rollout = Controller(CanaryMetrics(registry))
    rollout.configure(config.canary)
    submitted: list[Exchange] = []
    return (Proxy(lambda: upstreams, ProxyMetrics(registry), submitted.append, Health(lambda: upstreams), rollout,
                  protocol), upstreams, submitted)


def request(headers: dict[str, str], body: bytes | None = b"{}", protocol: str = "http",
            decoded: list[bytes] | None = None) -> Incoming:
    def decode(data: bytes) -> str | None:
        if decoded is not None:
            decoded.append(data)
        return "body-id"
    return Incoming(protocol, headers.get, body, len(body) if body is not None else None, decode, "m")


def test_the_canary_serves_its_share_of_sticky_keys_alike_for_both_transports() -> None:
    config = Config(primary=PrimaryConfig(grpc=None), canary=CANARY_AT_HALF)
    http, ups, _ = proxy(config)
    grpc, grpc_ups, _ = proxy(config, "grpc")
    served = []
    for user in range(400):
        headers = {"x-user": f"user-{user}"}
        one = http.plan(ups, request(headers), infer=True, canary_here=True, mirror=True).served
        other = grpc.plan(grpc_ups, request(headers, protocol="grpc"), infer=True, canary_here=True, mirror=True)
        assert one == other.served  # one key, one upstream, whatever the transport
        assert http.plan(ups, request(headers), infer=True, canary_here=True, mirror=True).served == one
        served.append(one)
    assert 0.35 < served.count(CANARY) / len(served) < 0.65
    # Not an inference request, or no canary on this transport: the primary.
    assert http.plan(ups, request({"x-user": "u"}), infer=False, canary_here=True, mirror=False).served == PRIMARY
    assert all(http.plan(ups, request({"x-user": f"u{i}"}), infer=True, canary_here=False, mirror=True).served
               == PRIMARY for i in range(50))


def test_copies_come_with_an_exchange_and_a_request_id_when_the_client_gave_none() -> None:
    config = Config(primary=PrimaryConfig(grpc=None), shadows=(ShadowConfig("s", "http://127.0.0.1:9"),))
    http, ups, submitted = proxy(config)
    plan = http.plan(ups, request({}), infer=True, canary_here=False, mirror=True)
    assert [shadow.name for shadow in plan.copies] == ["s"] and plan.exchange is not None
    assert plan.add_request_id is not None and plan.exchange.request_id == plan.add_request_id
    given = http.plan(ups, request({"x-request-id": "r-1"}), infer=True, canary_here=False, mirror=True)
    assert given.add_request_id is None and given.exchange is not None and given.exchange.request_id == "r-1"
    for held in (plan, given):
        for shadow in held.copies:
            shadow.budget.give(2)  # what admit() took for the copies never sent here
    plan.settle(None)  # no answer came: the exchange records the primary as cancelled, and waits for the copy
    assert submitted == []


def test_a_streamed_body_is_not_mirrored_and_is_never_decoded() -> None:
    config = Config(primary=PrimaryConfig(grpc=None), shadows=(ShadowConfig("s", "http://127.0.0.1:9"),),
                    canary=CANARY_AT_HALF)
    http, ups, _ = proxy(config)
    decoded: list[bytes] = []
    plan = http.plan(ups, request({}, body=None, decoded=decoded), infer=True, canary_here=True, mirror=True)
    assert plan.copies == [] and plan.exchange is None and decoded == []


def test_the_body_is_decoded_once_for_the_sticky_key_and_the_sample_key() -> None:
    config = Config(primary=PrimaryConfig(grpc=None), shadows=(ShadowConfig("s", "http://127.0.0.1:9", fraction=0.5),),
                    canary=CANARY_AT_HALF)
    http, ups, _ = proxy(config)
    decoded: list[bytes] = []
    plan = http.plan(ups, request({}, decoded=decoded), infer=True, canary_here=True, mirror=True)
    assert decoded == [b"{}"]  # no x-user, no x-request-id: the body's id keys both decisions
    for shadow in plan.copies:
        shadow.budget.give(2)


def test_the_observer_counts_times_and_leaves_the_hop() -> None:
    http, _, _ = proxy(Config(primary=PrimaryConfig(grpc=None)))
    registry = http.metrics.registry
    received = time.perf_counter() - 0.010
    http.observer.upstream(PRIMARY, 0.004, 200)
    http.observer.answered(PRIMARY, "200", received, 0.004)
    http.observer.answered(PRIMARY, "200", received, None)  # streamed: no hop
    sample = registry.get_sample_value
    assert sample("sidecar_requests_total", {"upstream": PRIMARY, "protocol": "http", "code": "200"}) == 2
    assert sample("sidecar_upstream_duration_seconds_count", {"upstream": PRIMARY, "protocol": "http"}) == 1
    assert sample("sidecar_hop_duration_seconds_count", {"protocol": "http"}) == 1
    assert 0.005 < (sample("sidecar_hop_duration_seconds_sum", {"protocol": "http"}) or 0) < 1.0


def test_a_request_naming_shared_memory_goes_to_the_primary_alone() -> None:
    """Its tensors are in regions registered with the primary's process: a canary would not find them,
    and a shadow on the same host would write its outputs into the client's region."""
    config = Config(primary=PrimaryConfig(grpc=None), shadows=(ShadowConfig("s", "http://127.0.0.1:9"),),
                    canary=CanaryConfig("http://127.0.0.1:9", None, weight=100.0, copy_fraction=0.0))
    http, ups, submitted = proxy(config)
    body = (b'{"inputs": [{"name": "IN", "datatype": "FP32", "shape": [4], "parameters": '
            b'{"shared_memory_region": "input", "shared_memory_byte_size": 16}}]}')
    for user in range(20):
        plan = http.plan(ups, request({"x-user": f"u{user}"}, body), infer=True, canary_here=True, mirror=True)
        assert plan.served == PRIMARY and plan.copies == [] and plan.exchange is None
    skipped = ups.shadows[0].metrics.shadow_skipped.labels("s", "shared_memory")._value.get()
    assert skipped == 20 and submitted == []
    # the same request without a region is canaried and copied as any other
    plan = http.plan(ups, request({"x-user": "u"}, b'{"inputs": []}'), infer=True, canary_here=True, mirror=True)
    assert plan.served == CANARY and [s.name for s in plan.copies] == ["s"]
    for shadow in plan.copies:
        shadow.budget.give(len(b'{"inputs": []}'))


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(max_size=64), suffix=st.binary(max_size=64), names_region=st.booleans(),
       user=st.text(max_size=8))
def test_any_body_naming_a_region_is_the_primarys_alone(prefix: bytes, suffix: bytes, names_region: bool,
                                                       user: str) -> None:
    """Whatever surrounds it (JSON, protobuf bytes, garbage), the region's parameter keeps a request off the
    canary and the shadows; a body without it is routed as any other."""
    config = Config(primary=PrimaryConfig(grpc=None), shadows=(ShadowConfig("s", "http://127.0.0.1:9"),),
                    canary=CanaryConfig("http://127.0.0.1:9", None, weight=100.0, copy_fraction=0.0))
    http, ups, _ = proxy(config)
    body = prefix + (b"shared_memory_region" if names_region else b"") + suffix
    plan = http.plan(ups, request({"x-user": user}, body), infer=True, canary_here=True, mirror=True)
    if names_region or b"shared_memory_region" in body:
        assert plan.served == PRIMARY and plan.copies == [] and plan.exchange is None
    else:
        assert plan.served == CANARY and [s.name for s in plan.copies] == ["s"]
    for shadow in plan.copies:
        shadow.budget.give(len(body))
