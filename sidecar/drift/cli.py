"""``shadowserve-drift`` (also ``python -m sidecar.drift``): profiles, drift reports, shadow
comparison. Exit status: 0 pass, 1 drift or disagreement found (with ``--fail-on``), 2 usage
or data error."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sidecar.drift.columns import MAX_ELEMENTS
from sidecar.drift.errors import DriftError
from sidecar.drift.html import write_html
from sidecar.drift.html_tables import trace_link
from sidecar.drift.jobs import compare_records, profile_records, report_records
from sidecar.drift.profile import Profile
from sidecar.drift.progress import ProgressBar
from sidecar.drift.reader import PRIMARY, Window, count_rows, segment_files
from sidecar.drift.render import Report, table, write_json
from sidecar.drift.report_classes import ClassNames, model_dir_names, read_label_file, split_option
from sidecar.drift.thresholds import CATEGORICAL_TESTS, CORRECTIONS, NUMERIC_TESTS, DriftSettings
from sidecar.records.spool import LOCK_SUFFIX, PREFIX, recover

PASS, FOUND, ERROR = 0, 1, 2
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str) -> datetime:
    """ISO 8601 (UTC when no zone is given), or a duration before now: ``90m``, ``24h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO 8601 time nor a duration like 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=VALUE, e.g. wasserstein=0.2") from None


def _trace_url(text: str) -> str:
    try:
        return trace_link(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# The decisions' flags: each sets the `DriftSettings` field of its name, whose default it shows.
_DECISIONS: tuple[tuple[str, type | tuple[str, ...], str], ...] = (
    ("--small-sample", int, "p-value tests up to this many values"),
    ("--alpha", float, "significance level of p-value tests"),
    ("--correction", CORRECTIONS, "multiple-testing correction"),
    ("--numeric-test", NUMERIC_TESTS, "test for numeric columns"),
    ("--categorical-test", CATEGORICAL_TESTS, "test for class columns"),
    ("--psi-epsilon", float, "share given to empty bins in PSI"),
    ("--max-nonfinite-increase", float, "rise in NaN/inf share that is drift"),
    ("--max-disagreement", float, "top-1 disagreement rate allowed"),
    ("--max-mad", float, "mean abs difference over std allowed"),
    ("--min-spearman", float, "lowest Spearman correlation allowed"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="only records of this model (required when the records hold several)")
    parser.add_argument("--since", type=parse_time, help="records from this time on (ISO 8601 or e.g. 7d ago)")
    parser.add_argument("--until", type=parse_time, help="records before this time")


def _common(parser: argparse.ArgumentParser, *, decisions: bool = True) -> None:
    defaults = DriftSettings()  # the flags' defaults are the decisions' own
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on standard error (default: when it is a terminal)")
    parser.add_argument("--bins", type=int, default=defaults.bins,
                        help="bins fitted on the reference (default %(default)s)")
    parser.add_argument("--max-elements", type=int, default=MAX_ELEMENTS,
                        help="tensors with more elements per row are pooled into one column (default %(default)s)")
    if not decisions:
        return
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("--class-names", action="append", default=[], metavar="[OUTPUT=]FILE",
                        help="the HTML report names the classes of OUTPUT (default: every output) from a "
                             "label file, one name per line, as Triton's label_filename (repeatable)")
    parser.add_argument("--trace-url", type=_trace_url, metavar="TEMPLATE",
                        help="the HTML report links each trace id there: an http(s) address with {trace_id}")
    parser.add_argument("--model-dir", type=Path, metavar="DIR",
                        help="a Triton model directory: class names from its outputs' label_filename")
    parser.add_argument("--fail-on", action="append", choices=("drift", "disagreement"), default=[],
                        help="exit 1 when this is found (repeatable): the CI gate")
    group = parser.add_argument_group("decisions (defaults in docs/drift.md)")
    for flag, kind, text in _DECISIONS:
        typed: dict[str, Any] = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        group.add_argument(flag, default=getattr(defaults, _dest(flag)), help=f"{text} (default %(default)s)", **typed)
    thresholds = [f"{name} ({value:g})" for name, value in defaults.thresholds.items()]
    group.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="NAME=VALUE",
                       help=f"{', '.join(thresholds[:-1])} or {thresholds[-1]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowserve-drift", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser("profile", help="build a reference profile from records")
    profile.add_argument("--records", type=Path, required=True, help="a directory of segments, or one segment")
    profile.add_argument("--out", type=Path, required=True, help="the profile file to write (JSON)")
    profile.add_argument("--upstream", default=PRIMARY, help="whose predictions: primary (default) or a shadow")
    profile.add_argument("--no-inputs", action="store_true", help="leave recorded inputs out")
    _window_options(profile)
    _common(profile, decisions=False)
    merge = commands.add_parser("merge", help="merge profiles of parts of a window into one")
    merge.add_argument("profiles", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("report", help="window drift: reference vs current")
    report.add_argument("--reference", type=Path, required=True, help="a profile file, or records")
    report.add_argument("--current", type=Path, required=True, help="records of the current window")
    report.add_argument("--reference-since", type=parse_time, help="reference records from this time on")
    report.add_argument("--reference-until", type=parse_time, help="reference records before this time")
    report.add_argument("--upstream", default=PRIMARY, help="whose predictions: primary (default) or a shadow")
    report.add_argument("--no-inputs", action="store_true", help="leave recorded inputs out")
    _window_options(report)
    _common(report)
    compare = commands.add_parser("compare", help="primary vs shadow on the same requests")
    compare.add_argument("--records", type=Path, required=True)
    compare.add_argument("--shadow", required=True, help="the shadow's name (its upstream in the records)")
    compare.add_argument("--labels", type=Path, help="Parquet or CSV with request_id and label: adds McNemar's test")
    _window_options(compare)
    _common(compare)
    salvage = commands.add_parser(
        "recover", help="finish the open segments that killed sidecars left behind (needs write access)")
    salvage.add_argument("directories", type=Path, nargs="+",
                         help="record directories; their subdirectories are searched too")
    return parser


def recover_directories(roots: Sequence[Path]) -> int:
    """Finish the open segments of every writer that is gone, below each root; never a live writer's.

    A sidecar finishes what an earlier one left in its own record directory when it starts;
    a pod replaced under a new name never does, so this runs before the drift job reads.
    """
    total = 0
    for root in roots:
        if not root.is_dir():
            raise DriftError(f"{root} is not a directory of records")
        for directory, _dirs, names in os.walk(root, followlinks=False):
            if any(n.startswith(f".{PREFIX}") and n.endswith(LOCK_SUFFIX) for n in names):
                finished = recover(Path(directory))
                total += len(finished)
                for path in finished:
                    print(f"recovered {path}")
    print(f"{total} segment(s) recovered")
    return PASS


def settings_from(args: argparse.Namespace) -> DriftSettings:
    overrides: dict[str, Any] = {"bins": args.bins}
    for name in (_dest(flag) for flag, _, _ in _DECISIONS):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "threshold", None):
        overrides["thresholds"] = dict(args.threshold)
    return DriftSettings().with_overrides(overrides)


def _progress(args: argparse.Namespace, paths: list[Path], label: str) -> ProgressBar:
    total = sum(count_rows(segment_files(p)) for p in paths)
    return ProgressBar(total, label, force=args.progress)


def class_names_from(args: argparse.Namespace) -> ClassNames:
    """The class names ``--model-dir`` and ``--class-names`` give (the latter win, per output)."""
    by_output = model_dir_names(args.model_dir) if getattr(args, "model_dir", None) else {}
    default = None
    for text in getattr(args, "class_names", []):
        output, path = split_option(text)
        if output is None:
            default = read_label_file(path)
        else:
            by_output[output] = read_label_file(path)
    return ClassNames(by_output, default)


def _finish(report: Report, args: argparse.Namespace, names: ClassNames) -> int:
    print(table(report))
    if args.json:
        write_json(report, args.json)
    if args.html:
        write_html(report, args.html, class_names=names, trace_url=args.trace_url)
    found = {"drift": report.drift, "disagreement": getattr(report, "disagreement", False)}
    return FOUND if any(found[f] for f in args.fail_on) else PASS


def run(args: argparse.Namespace) -> int:
    if args.command == "recover":
        return recover_directories(args.directories)
    if args.command == "merge":
        merged = Profile.load(args.profiles[0])
        for path in args.profiles[1:]:
            merged = merged.merge(Profile.load(path))
        merged.save(args.out)
        print(f"merged {len(args.profiles)} profiles ({merged.predictions():,} predictions) into {args.out}")
        return PASS
    settings = settings_from(args)
    names = class_names_from(args)  # before reading: a wrong label file fails in a second, not after the job
    options = {"settings": settings, "max_elements": args.max_elements}
    if args.command == "profile":
        bar = _progress(args, [args.records], "profile")
        profile = profile_records(Window(args.records, args.model, args.since, args.until), upstream=args.upstream,
                                  inputs=not args.no_inputs, progress=bar, **options)
        bar.close()
        profile.save(args.out)
        print(f"profiled {profile.source['records']:,} records, {len(profile.columns)} columns, into {args.out}")
        return PASS
    if args.command == "report":
        current = Window(args.current, args.model, args.since, args.until)
        reference: Profile | Window
        if args.reference.is_file() and args.reference.suffix != ".parquet":
            reference = Profile.load(args.reference)
            bar = _progress(args, [args.current], "report")
        else:
            reference = Window(args.reference, args.model, args.reference_since, args.reference_until)
            bar = _progress(args, [args.reference, args.current], "report")
        report = report_records(reference, current, upstream=args.upstream, inputs=not args.no_inputs,
                                progress=bar, **options)
        bar.close()
        return _finish(report, args, names)
    bar = _progress(args, [args.records], "compare")
    window = Window(args.records, args.model, args.since, args.until)
    result = compare_records(window, args.shadow, labels=args.labels, progress=bar, **options)
    bar.close()
    return _finish(result, args, names)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DriftError as error:
        print(f"shadowserve-drift: error: {error}", file=sys.stderr)
        return ERROR
    except OSError as error:
        print(f"shadowserve-drift: error: {error}", file=sys.stderr)
        return ERROR
