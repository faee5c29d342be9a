"""The systems benchmarks/frontend.py measures: how each is started, checked and stopped.

serve (one process, and with ``--frontend-workers N``), serve on Triton's own ``model.py``,
Triton 2.51 (triton_peer.py) and the no-op floors (programs/noop_server.py for HTTP,
programs/noop_grpc_server.py for gRPC). Before it is measured, each system answers one request
of each protocol it serves, whose outputs are checked (not the floors': they answer a fixed
reply), and whose gRPC answer size becomes the byte check of every h2load run against it.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from compute_points import start_serve
from frontend_model import GRPC_PATH, HTTP_PATH, MODEL, expected_outputs, grpc_frame, grpc_message, json_body
from harness import PROGRAMS, ServerProcess, Unavailable, free_port
from triton_peer import Distribution, start_triton

MAX_ANSWER_BYTES = 1 << 20
MAX_METRICS_BYTES = 8 << 20


@dataclass
class System:
    """One running server: its base URL per protocol, what checks it, and how it stops."""

    key: str
    label: str
    kind: str  # "serve", "triton" or "floor"
    bases: dict[str, str]  # protocol -> http://127.0.0.1:PORT
    stop: Callable[[], object]
    metrics: str | None = None  # a Prometheus endpoint with nv_inference_request_* for the model
    answer_bytes: dict[str, int] = field(default_factory=dict)  # protocol -> bytes of one good answer


def _check(outputs: dict[str, list[int]], label: str, protocol: str) -> None:
    expected = expected_outputs()
    if outputs != expected:
        raise Unavailable(f"{label} answered {protocol} wrongly: {outputs} where {expected} was expected")


def probe_grpc(base: str, label: str, check: bool) -> int:
    """One ModelInfer call as raw bytes, as h2load sends it; returns the answer's length-prefixed size."""
    from tritonclient.grpc import service_pb2 as pb

    with grpc.insecure_channel(base.removeprefix("http://")) as channel:
        # no (de)serializers: bytes in, bytes out
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GRPC_PATH)
        try:
            answer = call(grpc_message(), timeout=30)
        except grpc.RpcError as exc:
            raise Unavailable(f"{label} refused the gRPC request: {exc.code()} {exc.details()}") from None
    if check:
        response = pb.ModelInferResponse.FromString(answer)
        outputs = {o.name: np.frombuffer(raw, dtype="<i4").tolist()
                   for o, raw in zip(response.outputs, response.raw_output_contents, strict=False)}
        _check(outputs, label, "gRPC")
    return len(grpc_frame(answer))


def probe_http(base: str, label: str, check: bool) -> int:
    """One JSON infer request; the outputs are checked."""
    request = urllib.request.Request(base + HTTP_PATH, data=json_body(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read(MAX_ANSWER_BYTES)
    except OSError as exc:
        raise Unavailable(f"{label} refused the HTTP request: {exc}") from None
    if check:
        outputs = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
        _check(outputs, label, "HTTP")
    return len(raw)


def inference_counts(metrics: str) -> dict[str, float]:
    """The model's ``nv_inference_request_failure`` by reason, all versions together (Triton's names and
    reasons: serve and Triton export both); ``""`` for a sample without a reason."""
    with urllib.request.urlopen(metrics, timeout=10) as answer:
        text = answer.read(MAX_METRICS_BYTES).decode("utf-8", errors="replace")
    totals: dict[str, float] = {}
    for labels, value in re.findall(r'^nv_inference_request_failure\{([^}]*)\}\s+([0-9.eE+-]+)$', text, re.M):
        if f'model="{MODEL}"' in labels:
            reason = re.search(r'reason="([^"]*)"', labels)
            key = reason.group(1) if reason else ""
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def failures_between(before: dict[str, float], after: dict[str, float], in_flight: int) -> tuple[int, str]:
    """Failed requests the server counted between two scrapes, and what they were.

    A timed h2load run ends by closing its connections with up to ``in_flight`` requests unanswered,
    which a server may count as cancelled: that many cancellations are the run's end, not failures.
    """
    delta = {reason: after.get(reason, 0.0) - before.get(reason, 0.0) for reason in after}
    cancelled = delta.pop("CANCELED", 0.0)
    failed = sum(delta.values()) + max(0.0, cancelled - in_flight)
    described = ", ".join(f"{n:.0f} {reason or 'failed'}" for reason, n in delta.items() if n)
    return int(failed), described or f"{cancelled:.0f} CANCELED"


def probe(system: System, protocols: list[str]) -> System:
    """Check the system's answers; records the size of a good gRPC answer. Stops it when one is wrong."""
    try:
        for protocol in protocols:
            if protocol in system.bases:
                prober = probe_grpc if protocol == "grpc" else probe_http
                system.answer_bytes[protocol] = prober(system.bases[protocol], system.label, system.kind != "floor")
    except BaseException:
        system.stop()
        raise
    return system


def _worker_processes(pid: int) -> int:
    """How many of ``pid``'s child processes are serve's front-end workers."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid and b"serving.frontend" in (proc / "cmdline").read_bytes():
                count += 1
        except (OSError, ValueError, IndexError):
            continue
    return count


def start_serve_system(repository: Path, workdir: Path, workers: int, key: str, label: str) -> System:
    """serve on free ports, one torch thread (the model adds 16 integers); with ``workers`` front-end workers."""
    extra = ("--frontend-workers", str(workers)) if workers else ()
    serve = start_serve(repository, workdir, name=key, threads=1, extra=extra)
    if workers and (found := _worker_processes(serve.process.proc.pid)) != workers:
        serve.process.stop()
        raise Unavailable(f"serve --frontend-workers {workers} started {found} front-end worker process(es): "
                          "the flag is not in effect in this tree")
    return System(key, label, "serve", {"grpc": f"http://{serve.grpc}", "http": f"http://{serve.http}"},
                  serve.process.stop, serve.metrics)


def start_triton_system(distribution: Distribution, repository: Path, workdir: Path) -> System:
    triton = start_triton(distribution, repository, workdir, MODEL)
    return System("triton", f"Triton {triton.version}", "triton",
                  {"grpc": f"http://{triton.grpc}", "http": triton.http}, triton.stop, triton.metrics)


def start_floor(protocol: str, workdir: Path) -> System:
    """The no-op server of ``protocol``: the same HTTP/gRPC stack with a handler that does nothing."""
    program = "noop_grpc_server.py" if protocol == "grpc" else "noop_server.py"
    port = free_port()
    process = ServerProcess(f"no-op {protocol}", [sys.executable, str(PROGRAMS / program), "--port", str(port)],
                            workdir / f"noop-{protocol}.log")
    try:
        process.wait_log(r"listening on", timeout=60)
    except BaseException:
        process.stop()
        raise
    label = "no-op grpc.aio" if protocol == "grpc" else "no-op aiohttp"
    return System(f"floor-{protocol}", label, "floor", {protocol: f"http://127.0.0.1:{port}"}, process.stop)
