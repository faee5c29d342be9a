"""The prediction distribution of one model version: numpy bucket counts, updated once per batch off the loop.

No peer exports it: the values of every numeric output, and for class-score outputs the
top-1 class and its confidence, as histograms and counters that the metrics collector
exports at scrape time.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor

import numpy as np

from inference_protocol.datatypes import float_from_bf16_bits
from inference_protocol.predictions import top1

from .config import ModelSpec

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MAX_PENDING_BATCHES = 256  # batches waiting to be counted into the prediction distribution
MAX_CLASS_LABELS = 100  # classes past this index share the label "other": bounded cardinality


class PredictionStats:
    """The distribution of one model version's outputs, as bucket counts.

    `submit` hands a batch's outputs to one background thread per server, beside the
    request path: the batch's responses do not wait for the counting. At most
    ``MAX_PENDING_BATCHES`` batches wait to be counted; more are dropped and counted in
    ``serving_prediction_stats_dropped_total``.
    """

    def __init__(self, spec: ModelSpec, worker: Executor | None = None) -> None:
        self._lock = threading.Lock()
        self._worker = worker
        self._pending = 0
        self.dropped = 0
        class_outputs = spec.class_outputs()
        self.values: dict[str, tuple[np.ndarray, np.ndarray, list[float]]] = {}
        self.classes: dict[str, tuple[tuple[str, ...] | None, np.ndarray]] = {}
        self.confidence: dict[str, tuple[np.ndarray, list[float]]] = {}
        for output in spec.outputs:
            if output.datatype in ("BYTES", "BOOL"):
                continue
            edges = np.asarray(spec.prediction_buckets(output.name), dtype=np.float64)
            self.values[output.name] = (edges, np.zeros(len(edges) + 1, dtype=np.int64), [0.0])
            if output.name in class_outputs:
                n = len(output.labels) if output.labels else MAX_CLASS_LABELS
                self.classes[output.name] = (output.labels, np.zeros(min(n, MAX_CLASS_LABELS) + 1, dtype=np.int64))
                self.confidence[output.name] = (np.zeros(len(CONFIDENCE_BUCKETS) + 1, dtype=np.int64), [0.0])
        self._confidence_edges = np.asarray(CONFIDENCE_BUCKETS)
        self._bf16 = {o.name for o in spec.outputs if o.datatype == "BF16"}

    def submit(self, outputs: dict[str, np.ndarray]) -> None:
        """Count one batch of outputs beside the request path (at once when there is no worker)."""
        if not self.values:
            return
        if self._worker is None:
            self.observe(outputs)
            return
        with self._lock:
            if self._pending >= MAX_PENDING_BATCHES:
                self.dropped += 1
                return
            self._pending += 1
        self._worker.submit(self._observe_pending, outputs)

    def _observe_pending(self, outputs: dict[str, np.ndarray]) -> None:
        try:
            self.observe(outputs)
        finally:
            with self._lock:
                self._pending -= 1

    def observe(self, outputs: dict[str, np.ndarray]) -> None:
        """Count one batch of outputs (host arrays of the declared datatypes); runs per batch, off the loop."""
        updates = []
        for name, (edges, counts, total) in self.values.items():
            array = outputs.get(name)
            if array is None or array.size == 0:
                continue
            if array.dtype == np.uint16 and name in self._bf16:
                array = float_from_bf16_bits(array)
            values = array.reshape(-1)
            if values.dtype.kind == "f" and values.dtype != edges.dtype:
                edges = edges.astype(values.dtype)  # compare in the output's own precision, without a copy of it
            summed = float(values.sum(dtype=np.float64))
            if not np.isfinite(summed):  # rare: drop NaN and infinities instead of counting them
                values = values[np.isfinite(values)]
                summed = float(values.sum(dtype=np.float64))
            hist = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(counts))
            update = [(counts, hist, total, summed)]
            if name in self.classes:
                # scores lie along the last axis; every other axis indexes predictions
                update += self._classes_update(name, array.reshape(-1, array.shape[-1] if array.ndim else 1))
            updates += update
        with self._lock:
            for counts, hist, total, summed in updates:
                counts += hist
                total[0] += summed

    def _classes_update(self, name: str, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, list[float], float]]:
        _, class_counts = self.classes[name]
        conf_counts, conf_total = self.confidence[name]
        top = top1(scores)
        confidence = scores.max(axis=1)
        finite = np.isfinite(confidence)  # also drops rows holding NaN, whose top-1 is -1
        if not finite.all():
            top, confidence = top[finite], confidence[finite]
        top = np.minimum(top, len(class_counts) - 1)
        return [
            (class_counts, np.bincount(top, minlength=len(class_counts)), [0.0], 0.0),
            (conf_counts, np.bincount(np.searchsorted(self._confidence_edges, confidence, side="left"),
                                      minlength=len(conf_counts)), conf_total, float(confidence.sum(dtype=np.float64))),
        ]

    def class_label(self, name: str, index: int) -> str:
        labels, counts = self.classes[name]
        if index == len(counts) - 1:
            return "other"  # classes past the labels file or past MAX_CLASS_LABELS
        return labels[index] if labels else str(index)
