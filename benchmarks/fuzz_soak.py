"""Hostile input at volume: 10,000+ fuzzed requests per protocol to a real ``serve``.

    python benchmarks/fuzz_soak.py                 # 10,000 per protocol, a few minutes
    python benchmarks/fuzz_soak.py --count 500     # a smoke run

Starts ``python -m serving`` on the example repository in its own process, then sends
the strategies of tests/test_fuzz_servers.py (malformed JSON and binary bodies, odd
paths, versions and headers over HTTP; arbitrary and damaged ModelInferRequest bytes
to the gRPC methods) one after another, and prints the status classes it got, the
serve process's RSS before and after, and what the measured attack (``sentiment``,
BYTES shape [2147483648, 1], 8 bytes of raw contents: 44 bytes on the wire) costs per
request. Exits 1 when any answer is a 5xx, INTERNAL or UNKNOWN, or a good request's
answer changed.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import EXAMPLES, Serve
from tests.test_fuzz_codecs import corrupt_messages, infer_messages
from tests.test_fuzz_servers import Grpc, Http, good_answers, http_calls


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def soak(count: int, run: Any, strategy: st.SearchStrategy[Any]) -> None:
    """``run`` on ``count`` examples of ``strategy`` (hypothesis as a generator, no shrinking)."""
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(example: Any) -> None:
        run(example)
    one()


def attack_cost(http: Http, raw: Grpc, repeats: int = 200) -> dict[str, float]:
    attack = pb.ModelInferRequest(model_name="sentiment")
    attack.inputs.add(name="TEXT", datatype="BYTES", shape=[2147483648, 1])
    attack.raw_input_contents.append(b"\x01\x00\x00\x00ab\x00\x00")
    wire = attack.SerializeToString()
    header = orjson.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2147483648, 1],
                                       "parameters": {"binary_data_size": 8}}]})
    body = header + b"\x01\x00\x00\x00ab\x00\x00"
    grpc_ms, http_ms = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        code, _ = raw.call("ModelInfer", wire)
        grpc_ms.append((time.perf_counter() - started) * 1000)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code
        started = time.perf_counter()
        status, _ = http.call("POST", "/v2/models/sentiment/infer", body,
                              {"Inference-Header-Content-Length": str(len(header))})
        http_ms.append((time.perf_counter() - started) * 1000)
        assert status == 400, status
    return {"bytes": len(wire), "grpc_p50": statistics.median(grpc_ms), "grpc_max": max(grpc_ms),
            "http_p50": statistics.median(http_ms), "http_max": max(http_ms)}


def decoder_cost(repeats: int = 1000) -> dict[str, float]:
    """The attack's cost inside the server: parse and decode, timed and traced in this process."""
    from inference_protocol.errors import InvalidInput
    from inference_protocol.protobuf import decode_model_infer_request
    attack = pb.ModelInferRequest(model_name="sentiment")
    attack.inputs.add(name="TEXT", datatype="BYTES", shape=[2147483648, 1])
    attack.raw_input_contents.append(b"\x01\x00\x00\x00ab\x00\x00")
    wire = attack.SerializeToString()
    times = []
    for index in range(repeats + 1):
        if index == repeats:
            tracemalloc.start()
        started = time.perf_counter()
        try:
            decode_model_infer_request(pb.ModelInferRequest.FromString(wire))
        except InvalidInput:
            pass
        times.append((time.perf_counter() - started) * 1e6)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"p50_us": statistics.median(times[:-1]), "max_us": max(times[:-1]), "peak_kib": peak / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="fuzzed requests per protocol")
    args = parser.parse_args()
    print(f"load average before: {loadavg()}")
    serve = Serve(EXAMPLES)
    port = next(e["grpc_port"] for e in serve.lines if e["message"].startswith("listening "))
    http, raw = Http(serve.http), Grpc(f"127.0.0.1:{port}")
    failures = 0
    try:
        before = good_answers(http, raw)
        rss_start = rss_mib(serve.process.pid)
        statuses: collections.Counter[int] = collections.Counter()
        codes: collections.Counter[str] = collections.Counter()

        bad: list[str] = []  # the first few server-side failures, to reproduce them

        def http_one(call: tuple[str, str, bytes, dict[str, str]]) -> None:
            status, answer = http.call(*call)
            statuses[status] += 1
            if status >= 500 and len(bad) < 5:
                bad.append(f"HTTP {status} {answer} for {call!r:.300}")

        def grpc_one(example: tuple[str, bytes]) -> None:
            code, details = raw.call(*example)
            codes[code.name] += 1
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and len(bad) < 5:
                bad.append(f"gRPC {code.name} {details!r:.200} for {example!r:.300}")

        started = time.monotonic()
        soak(args.count, http_one, http_calls())
        http_s = time.monotonic() - started
        rss_http = rss_mib(serve.process.pid)
        methods = st.sampled_from(["ModelInfer"] * 6 + ["ModelReady", "ModelMetadata", "ModelConfig",
                                                        "ModelStatistics", "RepositoryIndex", "ServerMetadata"])
        data = st.one_of(infer_messages().map(lambda m: m.SerializeToString()), corrupt_messages())
        started = time.monotonic()
        soak(args.count, grpc_one, st.tuples(methods, data))
        grpc_s = time.monotonic() - started
        rss_end = rss_mib(serve.process.pid)
        cost = attack_cost(http, raw)
        rss_attack = rss_mib(serve.process.pid)
        same = good_answers(http, raw) == before
        classes = collections.Counter(f"{s // 100}xx" for s in statuses.elements())
        print(f"HTTP: {sum(statuses.values())} requests in {http_s:.0f} s: {dict(sorted(statuses.items()))} "
              f"({dict(sorted(classes.items()))})")
        print(f"gRPC: {sum(codes.values())} calls in {grpc_s:.0f} s: {dict(sorted(codes.items()))}")
        print(f"serve RSS MiB: start {rss_start:.0f}, after HTTP {rss_http:.0f}, after gRPC {rss_end:.0f}, "
              f"after 2 x 200 attacks {rss_attack:.0f}")
        print(f"attack ({cost['bytes']:.0f} B on gRPC): gRPC p50 {cost['grpc_p50']:.2f} ms max "
              f"{cost['grpc_max']:.2f} ms; HTTP p50 {cost['http_p50']:.2f} ms max {cost['http_max']:.2f} ms "
              "(round trips on 127.0.0.1)")
        inside = decoder_cost()
        print(f"attack inside serve (parse + decode): p50 {inside['p50_us']:.0f} us, max {inside['max_us']:.0f} us, "
              f"peak {inside['peak_kib']:.1f} KiB allocated")
        print(f"good requests answered as before: {same}")
        for line in bad:
            print("  failure:", line)
        failures = classes["5xx"] + codes["INTERNAL"] + codes["UNKNOWN"] + (not same)
    finally:
        http.close()
        raw.close()
        serve.process.terminate()
        serve.finish()
        print(f"load average after: {loadavg()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
