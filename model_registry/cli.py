"""``shadowserve-registry``: register, alias, promote, roll back, pull; the audit log.

Exit statuses: 0 done; 1 refused (promotion evidence that does not pass, files that fail
verification); 2 a usage error or a registry error (unknown model or alias, a directory that is
not a Triton model, a registry that is down). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .audit import AuditEntry
from .errors import EvidenceRefused, RegistryError, VerificationFailed
from .evidence import judge
from .pull import pull
from .store import Registry, bound_calls
from .uris import ModelUri, check_alias, check_model_name, check_version, parse_model_uri

DONE, REFUSED, ERROR = 0, 1, 2
MAX_EVIDENCE_BYTES = 256 * 1024 * 1024
LINEAGE = {"source_revision": "source revision (a commit)", "training_run": "the training run (an MLflow run id)",
           "data_snapshot": "the data snapshot it was trained on"}


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowserve-registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry-uri", help="the registry (default: $MLFLOW_REGISTRY_URI, $MLFLOW_TRACKING_URI, "
                                               "else an embedded one under ./registry)")
    parser.add_argument("--actor", help="who acts, for the audit log (default: $SHADOWSERVE_ACTOR, else user@host)")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a Triton model directory as a new version")
    register.add_argument("directory", type=Path, metavar="DIR")
    register.add_argument("--name", required=True, help="the registered model (and served) name")
    register.add_argument("--version-dir", help="the numbered version directory to register, when DIR holds several")
    register.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                          help="a tag on the new version (repeatable)")
    for key, what in LINEAGE.items():
        register.add_argument(f"--{key.replace('_', '-')}", help=f"lineage: {what}")
    alias = commands.add_parser("alias", help="point an alias at a version")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version")
    alias.add_argument("--reason", default="")
    rollback = commands.add_parser("rollback", help="move an alias back to the version it held before")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="champion")
    rollback.add_argument("--reason", default="")
    history = commands.add_parser("history", help="the audit log of a model")
    history.add_argument("name")
    history.add_argument("--json", action="store_true", help="one JSON object a line")
    pull_cmd = commands.add_parser("pull", help="materialise a Triton repository, every digest verified")
    pull_cmd.add_argument("uris", nargs="+", metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    pull_cmd.add_argument("--dest", type=Path, required=True, help="the model repository to write")
    pull_cmd.add_argument("--cache", type=Path, help="keep downloads here for the next pull (verified again on use)")
    promote = commands.add_parser("promote", help="move an alias to a version, gated on its evidence")
    promote.add_argument("name")
    promote.add_argument("--to", required=True, metavar="ALIAS", help="the alias to move, e.g. champion")
    promote.add_argument("--evidence", type=Path, required=True, metavar="REPORT.json",
                         help="a passing `shadowserve-drift compare` report or canary verdict for that version")
    promote.add_argument("--version", help="the version to promote (default: the one --from points at)")
    promote.add_argument("--from", dest="source", default="challenger", metavar="ALIAS",
                         help="where the version comes from when --version is absent (default challenger)")
    promote.add_argument("--reason", default="")
    resolve = commands.add_parser("resolve", help="the version a URI names now")
    resolve.add_argument("uri")
    resolve.add_argument("--format", choices=("text", "json", "build-args"), default="text")
    return parser


def _register(registry: Registry, args: argparse.Namespace) -> int:
    tags = dict(args.tag)
    revision = args.source_revision or _git_revision(args.directory)
    for key in LINEAGE:
        value = revision if key == "source_revision" else getattr(args, key)
        if value:
            tags[f"shadowserve.lineage.{key}"] = value
    version = registry.register(args.directory, args.name, version_dir=args.version_dir, tags=tags, actor=args.actor)
    print(f"registered {version.uri} (manifest sha256 {version.manifest_digest})")
    print(version.version)
    return DONE


def _git_revision(directory: Path) -> str | None:
    """The commit the directory is at, when it is in a clean git work tree (else no lineage is claimed)."""
    try:
        head = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'-dirty' if dirty else ''}" if head else None


def _promote(registry: Registry, args: argparse.Namespace) -> int:
    name, alias = check_model_name(args.name), check_alias(args.to)
    if args.version is not None:
        version = registry.resolve(ModelUri(name, version=check_version(args.version)))
    else:
        version = registry.resolve(ModelUri(name, alias=check_alias(args.source)))
    data = _read_evidence(args.evidence)
    digest = hashlib.sha256(data).hexdigest()
    try:
        document = json.loads(data)
    except ValueError:
        raise EvidenceRefused(f"{args.evidence} is not JSON") from None
    try:
        summary = judge(document, name, version.version)
    except EvidenceRefused as refused:
        registry.record(name, AuditEntry.now("refused", actor=args.actor, version=version.version, alias=alias,
                                             reason=str(refused), details={"evidence_sha256": digest}))
        raise
    details = {"evidence_sha256": digest, "evidence": summary, "format": document.get("format")}
    entry = registry.set_alias(name, alias, version.version, reason=args.reason or summary, actor=args.actor,
                               action="promote", details=details)
    registry.tag_version(name, version.version, {f"shadowserve.evidence.{alias}": json.dumps(
        {**details, "time": entry.time, "actor": entry.actor}, sort_keys=True)})
    try:
        registry.attach(version, args.evidence, "evidence")
    except RegistryError as exc:  # the digest is on the version already; the copy is a convenience
        print(f"shadowserve-registry: warning: the evidence file was not stored with the version: {exc}",
              file=sys.stderr)
    was = f" (was {entry.previous})" if entry.previous is not None else ""
    print(f"promoted {version.uri} to @{alias}{was}: {summary}")
    return DONE


def _read_evidence(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_EVIDENCE_BYTES:
            raise EvidenceRefused(f"{path} is larger than {MAX_EVIDENCE_BYTES} bytes; it is not a report")
        return path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read the evidence {path}: {exc.strerror}") from None


def _rollback(registry: Registry, args: argparse.Namespace) -> int:
    name, alias = check_model_name(args.name), check_alias(args.alias)
    current = registry.resolve(ModelUri(name, alias=alias)).version
    moves = [e for e in registry.history(name) if e.alias == alias and e.version == current
             and e.previous is not None and e.action in ("alias", "promote", "rollback")]
    if not moves:
        raise RegistryError(f"the audit log of {name!r} has no earlier version for @{alias}: name one with "
                            f"shadowserve-registry alias {name} {alias} VERSION")
    previous = moves[-1].previous
    assert previous is not None
    entry = registry.set_alias(name, alias, previous, reason=args.reason or f"rolled back from {current}",
                               actor=args.actor, action="rollback")
    print(f"rolled @{alias} of {name} back from {current} to {entry.version}")
    return DONE


def _resolve(registry: Registry, args: argparse.Namespace) -> int:
    version = registry.resolve(args.uri)
    if args.format == "build-args":
        print(f"--build-arg MODEL_VERSION={version.version} "
              f"--build-arg MODEL_MANIFEST_SHA256={version.manifest_digest}")
    elif args.format == "json":
        print(json.dumps({"uri": args.uri, "name": version.name, "version": version.version,
                          "manifest_sha256": version.manifest_digest, "aliases": list(version.aliases)}))
    else:
        print(version.version)
    return DONE


def run(args: argparse.Namespace) -> int:
    if args.command == "pull":
        targets = [parse_model_uri(uri) for uri in args.uris]  # every URI checked before any download
    registry = Registry.open(args.registry_uri, announce=lambda line: print(line, file=sys.stderr))
    if args.command == "register":
        return _register(registry, args)
    if args.command == "alias":
        entry = registry.set_alias(args.name, args.alias, check_version(args.version), reason=args.reason,
                                   actor=args.actor)
        was = f" (was {entry.previous})" if entry.previous is not None else ""
        print(f"@{args.alias} of {args.name} -> {entry.version}{was}")
        return DONE
    if args.command == "rollback":
        return _rollback(registry, args)
    if args.command == "history":
        for item in registry.history(args.name):
            print(json.dumps(item.to_json(), sort_keys=True) if args.json else item.line())
        return DONE
    if args.command == "pull":
        for version in pull(registry, targets, args.dest, args.cache):
            print(f"{version.uri} -> {args.dest / version.name / str(version.version)} "
                  f"(manifest sha256 {version.manifest_digest}, verified)")
        return DONE
    if args.command == "promote":
        return _promote(registry, args)
    return _resolve(registry, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's and Alembic's INFO lines are noise here
    bound_calls(os.environ)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (VerificationFailed, EvidenceRefused) as refused:
        print(f"shadowserve-registry: refused: {refused}", file=sys.stderr)
        return REFUSED
    except RegistryError as error:
        print(f"shadowserve-registry: error: {error}", file=sys.stderr)
        return ERROR

