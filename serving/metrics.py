"""Every metric, on a registry the server creates and passes in.

The hot path only bumps plain numbers on a `ModelStats`; one collector turns them into
Triton's ``nv_inference_*`` series at scrape time, and the same numbers answer the v2
statistics endpoint, so the two can never disagree. Latency and batch-size histograms
are plain bucket counts (`Buckets`), and the prediction distribution (`PredictionStats`)
numpy bucket counts updated once per batch off the event loop; both are exported as real
Prometheus histograms by the same collector.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import ModelSpec
from .instance_thread import InstanceThread
from .predictions import PredictionStats

LABELS = ("model", "version")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Buckets:
    """A latency or size histogram as plain counts: observed on the event loop, exported at scrape time.

    prometheus-client's Histogram takes a lock and several calls per observation; on the
    request path that costs more than everything else the runtime does for a request.
    """

    __slots__ = ("edges", "counts", "sum")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1
        self.sum += value

    def observe_ns(self, values_ns: list[int]) -> None:
        """Each of ``values_ns`` (nanoseconds) in seconds, as `observe` would one by one: a batch's at once."""
        counts, edges, total, bisect_left = self.counts, self.edges, self.sum, bisect.bisect_left
        for ns in values_ns:
            value = ns / 1e9
            counts[bisect_left(edges, value)] += 1
            total += value
        self.sum = total


class ModelStats:
    """Counters of one model version, in Triton's terms (durations in nanoseconds)."""

    def __init__(self, spec: ModelSpec, version: int, worker: Executor | None = None) -> None:
        self.model = spec.name
        self.version = str(version)
        self.success = [0, 0]  # [count, ns]
        self.fail = [0, 0]
        self.fail_reasons: Counter[str] = Counter()
        self.queue = [0, 0]
        self.compute_input = [0, 0]
        self.compute_infer = [0, 0]
        self.compute_output = [0, 0]
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, list[int]] = {}  # rows -> [count, input_ns, infer_ns, output_ns]
        self.out_of_memory: Counter[str] = Counter()  # "split": batches split; "failed": requests failed alone
        self.predictions = PredictionStats(spec, worker)
        self.request_seconds = Buckets(LATENCY_BUCKETS)
        self.queue_seconds = Buckets(LATENCY_BUCKETS)
        self.compute_seconds = Buckets(LATENCY_BUCKETS)
        self.batch_size = Buckets(BATCH_BUCKETS)
        self.pending: Callable[[], int] = lambda: 0
        self.busy: dict[tuple[str, str], list[int]] = {}  # (instance, device) -> [ns computing]

    def busy_counter(self, instance: int, device: str) -> list[int]:
        """The counter of one instance's busy time: ``[ns]``, bumped by that instance's thread alone."""
        return self.busy.setdefault((str(instance), device), [0])

    def record_batch(self, queue_ns: list[int], rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One executed batch of ``len(queue_ns)`` requests holding ``rows`` rows."""
        requests = len(queue_ns)
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        for stat, ns in ((self.compute_input, input_ns), (self.compute_infer, infer_ns),
                         (self.compute_output, output_ns)):
            stat[0] += requests
            stat[1] += ns * requests
        self.queue[0] += requests
        self.queue[1] += sum(queue_ns)
        entry = self.batch_stats.setdefault(rows, [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += input_ns
        entry[2] += infer_ns
        entry[3] += output_ns
        self.queue_seconds.observe_ns(queue_ns)
        self.compute_seconds.observe((input_ns + infer_ns + output_ns) / 1e9)
        self.batch_size.observe(rows)

    def record_request(self, duration_ns: int, reason: str | None = None) -> None:
        """One finished request; ``reason`` is None on success, else Triton's failure reason."""
        if reason is None:
            self.success[0] += 1
            self.success[1] += duration_ns
            self.request_seconds.observe(duration_ns / 1e9)
        else:
            self.fail[0] += 1
            self.fail[1] += duration_ns
            self.fail_reasons[reason] += 1

    def to_triton(self) -> dict[str, Any]:
        """This version's entry of the v2 statistics endpoint, in Triton's shape."""
        def pair(stat: list[int]) -> dict[str, int]:
            return {"count": stat[0], "ns": stat[1]}
        return {
            "name": self.model,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": pair(self.success), "fail": pair(self.fail), "queue": pair(self.queue),
                "compute_input": pair(self.compute_input), "compute_infer": pair(self.compute_infer),
                "compute_output": pair(self.compute_output),
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": {"count": e[0], "ns": e[1]},
                 "compute_infer": {"count": e[0], "ns": e[2]}, "compute_output": {"count": e[0], "ns": e[3]}}
                for size, e in sorted(self.batch_stats.items())
            ],
        }


_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests", lambda s: s.success[0]),
    ("nv_inference_count", "Number of inferences performed (rows, not requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of batches executed", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: s.success[1] // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue[1] // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input[1] // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer[1] // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output[1] // 1000),
)


def _counter(name: str, doc: str) -> Metric:
    # Triton's counters carry no _total suffix; build the family by hand to keep its names.
    return Metric(name, doc, "counter")


class ModelCollector(Collector):
    """Exposes every registered `ModelStats` as Triton's series and the prediction distribution."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelStats] = {}

    def collect(self) -> Iterator[Metric]:
        models = list(self.models.values())
        for name, doc, value in _COUNTERS:
            family = _counter(name, doc)
            for stats in models:
                family.add_sample(name, {"model": stats.model, "version": stats.version}, value(stats))
            yield family
        failure = _counter("nv_inference_request_failure", "Number of failed inference requests, by reason")
        pending = Metric("nv_inference_pending_request_count", "Instantaneous number of requests waiting in "
                         "the batcher's queue", "gauge")
        for stats in models:
            labels = {"model": stats.model, "version": stats.version}
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                failure.add_sample(failure.name, {**labels, "reason": reason}, stats.fail_reasons[reason])
            pending.add_sample(pending.name, labels, stats.pending())
        oom = _counter("serving_out_of_memory", "GPU out-of-memory events: batches split in half, and requests "
                       "that failed alone")
        for stats in models:
            for outcome in ("split", "failed"):
                oom.add_sample("serving_out_of_memory_total", {"model": stats.model, "version": stats.version,
                                                                "outcome": outcome}, stats.out_of_memory[outcome])
        dropped = _counter("serving_prediction_stats_dropped", "Batches left out of the prediction distribution "
                           "because its counting fell behind")
        for stats in models:
            dropped.add_sample("serving_prediction_stats_dropped_total", {"model": stats.model,
                                                                         "version": stats.version},
                               stats.predictions.dropped)
        busy = _counter("serving_instance_busy_seconds", "Seconds each model instance spent computing batches "
                        "(gathering inputs to splitting outputs); its rate is the instance's busy fraction")
        for stats in models:
            for (instance, device), counter in list(stats.busy.items()):
                busy.add_sample("serving_instance_busy_seconds_total", {"model": stats.model, "version": stats.version,
                                                                        "instance": instance, "device": device},
                                counter[0] / 1e9)
        yield failure
        yield pending
        yield busy
        yield oom
        yield dropped
        yield from self._histograms(models)
        yield from self._predictions(models)

    def _histograms(self, models: list[ModelStats]) -> Iterator[Metric]:
        for name, doc, attribute in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=LABELS)
            for stats in models:
                buckets: Buckets = getattr(stats, attribute)
                family.add_metric([stats.model, stats.version], _buckets(np.asarray(buckets.edges),
                                                                         np.asarray(buckets.counts)), buckets.sum)
            yield family

    def _predictions(self, models: list[ModelStats]) -> Iterator[Metric]:
        values = HistogramMetricFamily("serving_prediction_value", "Distribution of output values",
                                       labels=("model", "version", "output"))
        classes = _counter("serving_predicted_class", "Top-1 predicted class of class-score outputs")
        confidence = HistogramMetricFamily("serving_prediction_confidence", "Top-1 score of class-score outputs",
                                           labels=("model", "version", "output"))
        for stats in models:
            p = stats.predictions
            with p._lock:  # a consistent snapshot (the collector is its owner's friend)
                for output, (edges, counts, total) in p.values.items():
                    values.add_metric([stats.model, stats.version, output], _buckets(edges, counts), total[0])
                for output, (_labels, counts) in p.classes.items():
                    for index, count in enumerate(counts.tolist()):
                        if count:
                            classes.add_sample("serving_predicted_class_total",
                                               {"model": stats.model, "version": stats.version, "output": output,
                                                "class": p.class_label(output, index)}, count)
                for output, (counts, total) in p.confidence.items():
                    confidence.add_metric([stats.model, stats.version, output],
                                          _buckets(p._confidence_edges, counts), total[0])
        yield values
        yield classes
        yield confidence


def _buckets(edges: np.ndarray, counts: np.ndarray) -> list[tuple[str, float]]:
    cumulative = np.cumsum(counts).tolist()
    out = [(repr(float(edge)), float(cumulative[i])) for i, edge in enumerate(edges.tolist())]
    out.append(("+Inf", float(cumulative[-1])))
    return out


_HISTOGRAMS = (
    ("serving_request_duration_seconds", "End-to-end time of successful inference requests, from decoded "
     "request to result", "request_seconds"),
    ("serving_queue_duration_seconds", "Time requests waited in the batcher's queue", "queue_seconds"),
    ("serving_compute_duration_seconds", "Time to compute one batch (input, inference, output)", "compute_seconds"),
    ("serving_batch_size", "Rows per executed batch", "batch_size"),
)

_TRITON_COUNTERS = [name for name, _, _ in _COUNTERS] + ["nv_inference_request_failure"]


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format (0.0.4), with Triton's counter names.

    prometheus-client names every counter family ``<name>_total`` in its HELP and TYPE
    lines; Triton's counters have no such suffix, so their headers are written back to
    the names their samples carry, as Triton writes them.
    """
    text = generate_latest(registry)
    for name in _TRITON_COUNTERS:
        for kind in (b"HELP", b"TYPE"):
            text = text.replace(b"# %s %s_total " % (kind, name.encode()), b"# %s %s " % (kind, name.encode()), 1)
    return text


class Metrics:
    """The server's metrics: the registry plus the per-model-version statistics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # one thread counts the prediction distribution and writes the exposition, in submission order;
        # an instance thread hands it each batch (a SimpleQueue put: ThreadPoolExecutor.submit costs 3x that)
        self.worker = InstanceThread("prediction-stats")
        self.collector = ModelCollector()
        self.registry.register(self.collector)
        self.source_checks = PrometheusCounter("serving_model_source_updates", "Checks of each --model-source against "
                                               "the registry, by outcome", ("model", "source", "outcome"),
                                               registry=self.registry)
        self.source_version = Gauge("serving_model_source_version", "The registry version each --model-source serves",
                                    ("model", "source"), registry=self.registry)

    async def exposition(self) -> bytes:
        """The text exposition, written on the counting thread: after every batch submitted before it."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, exposition, self.registry)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)

    def add_model(self, spec: ModelSpec, version: int) -> ModelStats:
        stats = ModelStats(spec, version, self.worker)
        self.collector.models[(spec.name, str(version))] = stats
        return stats

    def remove_model(self, stats: ModelStats) -> None:
        key = (stats.model, stats.version)
        if self.collector.models.get(key) is stats:  # not when a reload of the same version took over
            del self.collector.models[key]
