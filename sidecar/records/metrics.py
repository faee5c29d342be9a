"""Records: agreement of answers, the recorder's queue, segments and the live drift gauges.

On a registry that is passed in (one per sidecar, never global); the series names are
the sidecar's public interface (docs/sidecar.md), so they do not change with the layout.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..buckets import DIFF_BUCKETS
from ..mirror.metrics import MirrorMetrics


class RecordMetrics:
    """Series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, mirror: MirrorMetrics | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # a 200 whose body is no v2 response is a shadow error, found only when decoded
        self.shadow_errors = (mirror if mirror is not None else MirrorMetrics(r)).shadow_errors
        self.compared_rows = Counter("sidecar_shadow_compared_rows", "Rows (first dimension) of an output "
                                     "compared between primary and shadow", ["shadow", "model", "output"],
                                     registry=r)
        self.top1_agree_rows = Counter("sidecar_shadow_top1_agree_rows", "Compared rows whose top-1 (the argmax "
                                       "of class scores, or the value itself for integer, bool and BYTES outputs) "
                                       "is the same", ["shadow", "model", "output"], registry=r)
        self.abs_diff = Histogram("sidecar_shadow_mean_abs_diff", "Mean absolute difference between primary and "
                                  "shadow values of an output, one observation per request",
                                  ["shadow", "model", "output"], buckets=DIFF_BUCKETS, registry=r)
        self.mismatches = Counter("sidecar_shadow_mismatches", "Outputs that could not be compared, by reason: "
                                  "missing (one side lacks it), shape, datatype", ["shadow", "model", "reason"],
                                  registry=r)
        self.canary_compared_rows = Counter("sidecar_canary_compared_rows", "Rows of a canary-served answer compared "
                                            "with the primary's answer to a copy of the request",
                                            ["model", "output"], registry=r)
        self.canary_agree_rows = Counter("sidecar_canary_top1_agree_rows", "Compared canary rows with the primary's "
                                         "top-1", ["model", "output"], registry=r)
        self.canary_abs_diff = Histogram("sidecar_canary_mean_abs_diff", "Mean absolute difference between the "
                                         "canary's and the primary's values of an output, one observation per "
                                         "request", ["model", "output"], buckets=DIFF_BUCKETS, registry=r)
        self.recorder_queue = Gauge("sidecar_recorder_queue_depth", "Records waiting to be decoded and written",
                                    registry=r)
        self.records_written = Counter("sidecar_records_written", "Records written to finished segments",
                                       registry=r)
        self.records_lost = Counter("sidecar_records_lost", "Records not written, by reason: queue_full, "
                                    "write_error, encode_error, shutdown", ["reason"], registry=r)
        self.segments_rotated = Counter("sidecar_segments_rotated", "Segments finished (fsynced and renamed)",
                                        registry=r)
        self.segments_deleted = Counter("sidecar_segments_deleted", "Segments deleted to stay under the disk "
                                        "quota", registry=r)
        self.inputs_skipped = Counter("sidecar_record_inputs_skipped", "Records whose inputs were to be kept "
                                      "but exceeded max_input_size", registry=r)
        self.live_psi = Gauge("sidecar_live_drift_psi", "Population stability index of the recent predictions "
                              "against the reference profile", ["model", "upstream", "output"], registry=r)
        self.live_js = Gauge("sidecar_live_drift_js", "Jensen-Shannon distance (base 2) of the recent predictions "
                             "against the reference profile", ["model", "upstream", "output"], registry=r)
        self.live_count = Gauge("sidecar_live_drift_window_predictions", "Predictions in the live drift window",
                                ["model", "upstream", "output"], registry=r)
        self.live_dropped = Counter("sidecar_live_drift_dropped", "Answers not observed for live drift because the "
                                    "recorder's queue was full", registry=r)
