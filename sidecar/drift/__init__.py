"""Offline drift statistics for recorded traffic, primary-vs-shadow comparison, reports and a
CI gate; plus the pure part of the sidecar's live drift gauges. numpy, scipy and pyarrow only.

Example::

    from pathlib import Path
    from sidecar.drift import Profile, Window, report_records

    reference = Profile.load("reference.json")
    report = report_records(reference, Window(Path("records/"), model="classifier"))
    print(report.drift, [c.name for c in report.columns if c.drift])
"""

from sidecar.drift.errors import DriftError
from sidecar.drift.html import render_html
from sidecar.drift.jobs import compare_records, profile_records, report_records
from sidecar.drift.live import LiveDrift, LiveValue
from sidecar.drift.paired import CompareReport, OutputComparison, compare_arrays
from sidecar.drift.profile import Profile
from sidecar.drift.reader import Window
from sidecar.drift.render import table, to_document
from sidecar.drift.stats import Statistic
from sidecar.drift.thresholds import DriftSettings
from sidecar.drift.window import ColumnResult, WindowReport, window_drift

__all__ = [
    "ColumnResult", "CompareReport", "DriftError", "DriftSettings", "LiveDrift", "LiveValue",
    "OutputComparison", "Profile", "Statistic", "Window", "WindowReport", "compare_arrays",
    "compare_records", "profile_records", "render_html", "report_records", "table", "to_document",
    "window_drift",
]
