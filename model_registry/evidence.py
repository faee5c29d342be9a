"""Promotion evidence: a passing comparison or canary verdict, for exactly the version promoted.

Two documents count:

- a ``shadowserve-drift compare --json`` report (``shadowserve.drift.report/1``, kind
  ``compare``): status ``pass``, at least one pair compared, and ``judged`` naming the model and
  the one version that every paired shadow response came from;
- a canary verdict from the sidecar's admin API (``shadowserve.canary.verdict/1``): ``passed``
  (the analysis reached ready-to-promote, or the canary was promoted) for that model and version.

Anything else is refused with the reason, before any alias moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import EvidenceRefused

REPORT_FORMAT = "shadowserve.drift.report/1"
VERDICT_FORMAT = "shadowserve.canary.verdict/1"


def _same_version(judged: Any, version: int) -> bool:
    return judged is not None and str(judged) == str(version)


def _compare(document: Mapping[str, Any], name: str, version: int) -> str:
    if document.get("kind") != "compare":
        raise EvidenceRefused(f"the report is a {document.get('kind')!r} report; promotion needs a "
                              "`shadowserve-drift compare` report of the shadow against the primary")
    judged = document.get("judged")
    if not isinstance(judged, Mapping):
        raise EvidenceRefused("the report does not say which version it judged (no 'judged' field): run "
                              "shadowserve-drift compare again with this release")
    if judged.get("model") != name:
        raise EvidenceRefused(f"the report judged model {judged.get('model')!r}, not {name!r}")
    if not _same_version(judged.get("version"), version):
        seen = judged.get("versions") or judged.get("version")
        raise EvidenceRefused(f"the report judged version(s) {seen} of {name!r}, not version {version}: "
                              "compare records of the shadow serving exactly that version")
    counts = document.get("counts") if isinstance(document.get("counts"), Mapping) else {}
    pairs = counts.get("paired_predictions", 0) if isinstance(counts, Mapping) else 0
    if not isinstance(pairs, int) or pairs <= 0:
        raise EvidenceRefused("the report compared no pairs: there is no evidence in it")
    if document.get("status") != "pass":
        raise EvidenceRefused(f"the report did not pass: its status is {document.get('status')!r}")
    return f"compare report: {pairs} pairs, status pass, models:/{name}/{version} against the primary"


def _verdict(document: Mapping[str, Any], name: str, version: int) -> str:
    if document.get("model") != name:
        raise EvidenceRefused(f"the canary verdict is about model {document.get('model')!r}, not {name!r}")
    if not _same_version(document.get("version"), version):
        raise EvidenceRefused(f"the canary verdict judged version {document.get('version')} of {name!r}, not "
                              f"version {version}")
    if document.get("passed") is not True:
        raise EvidenceRefused(f"the canary did not pass: its phase is {document.get('phase')!r} (promotion needs "
                              "'ready' or 'promoted')")
    return f"canary verdict: phase {document.get('phase')}, models:/{name}/{version}"


def judge(document: Mapping[str, Any], name: str, version: int) -> str:
    """A one-line summary when ``document`` is passing evidence for ``name`` ``version``; else `EvidenceRefused`."""
    if not isinstance(document, Mapping):
        raise EvidenceRefused("the evidence is not a JSON object")
    kind = document.get("format")
    if kind == REPORT_FORMAT:
        return _compare(document, name, version)
    if kind == VERDICT_FORMAT:
        return _verdict(document, name, version)
    raise EvidenceRefused(f"the evidence has format {kind!r}; promotion takes a {REPORT_FORMAT} compare report "
                          f"or a {VERDICT_FORMAT} canary verdict")
