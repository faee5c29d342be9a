"""Typed settings: the only place that reads argv and the environment.

Flags follow Triton's names; each flag also has a ``SERVING_*`` environment variable
(``--http-port`` ↔ ``SERVING_HTTP_PORT``). A flag given on the command line wins over
the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .access import GROUPS, GRPC_HEADER_PREFIX, AccessPolicy, parse_restrictions

MiB = 1024 * 1024
ENV_PREFIX = "SERVING_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
CONTROL_MODES = ("none", "explicit", "poll")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `serve` is configured with, parsed once at start-up."""

    model_repository: Path
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    device: str = "auto"
    cpu_threads: int = 0  # 0: one per CPU core, less one for the event loop
    max_request_bytes: int = 64 * MiB
    exit_timeout_secs: float = 30.0
    log_format: str = "text"
    log_level: str = "info"
    model_control_mode: str = "none"
    load_model: tuple[str, ...] = ()
    repository_poll_secs: float = 15.0
    strict_readiness: bool = True
    http_header_timeout_secs: float = 60.0  # also how long an idle keep-alive connection stays open
    http_body_timeout_secs: float = 60.0
    max_connections: int = 1024  # per port (HTTP, gRPC, metrics); 0: no cap
    admission_wait_secs: float = 1.0  # a request that finds its queue full waits this long for a place
    http_restricted_api: AccessPolicy = dataclasses.field(default_factory=AccessPolicy)
    # checked as the metadata triton-grpc-protocol-<key>
    grpc_restricted_protocol: AccessPolicy = dataclasses.field(default_factory=AccessPolicy)


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0..65535 (0 picks a free port)")
    return port


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or a positive integer")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} must be 0 or a positive number")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean: use true or false")


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return number


class _Restrict(argparse.Action):
    """Repeatable, keeping every use; not an append action, so that the environment variable is
    not split on commas (the group list has them): ';' separates restrictions there. The text is
    parsed in `parse`, whose messages never echo it: it holds a credential."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])


def _access_policy(given: str | tuple[str, ...]) -> AccessPolicy:
    """Restrictions from the flag's uses (a tuple) or its environment variable (one string)."""
    texts = (given,) if isinstance(given, str) else given
    return AccessPolicy.of(r for text in texts for r in parse_restrictions(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve the models of a model repository over the KServe v2 protocol.",
        epilog="Every flag can also be set with a SERVING_* environment variable, "
        "e.g. --http-port as SERVING_HTTP_PORT. Flags win over the environment.",
    )
    add = parser.add_argument
    add("--model-repository", type=Path, help="directory of <model>/config.pbtxt and <model>/<version>/ (required)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--http-port", type=_port, help="KServe v2 HTTP port (default 8000; 0 picks a free port)")
    add("--grpc-port", type=_port, help="KServe v2 gRPC port (default 8001; 0 picks a free port)")
    add("--metrics-port", type=_port, help="Prometheus /metrics port (default 8002; 0 picks a free port)")
    add("--device", type=_device, help="auto (a GPU when present), cpu, cuda or cuda:N (default auto)")
    add("--cpu-threads", type=_non_negative_int,
        help="torch's intra-op threads for CPU compute; 0 (default) uses the cores less one, which the event "
             "loop keeps")
    add("--max-request-bytes", type=_positive_int,
        help="largest request body accepted; larger ones get 413 (default 67108864, 64 MiB)")
    add("--exit-timeout-secs", type=float,
        help="on SIGTERM, how long in-flight and queued requests may take to finish (default 30)")
    add("--log-format", choices=LOG_FORMATS, help="text or json, one object a line (default text)")
    add("--log-level", choices=LOG_LEVELS, help="debug, info, warning or error (default info)")
    add("--model-control-mode", choices=CONTROL_MODES,
        help="none: load every model, refuse load/unload requests; explicit: load only --load-model, "
             "accept load/unload requests; poll: load every model and re-scan the repository (default none)")
    add("--load-model", action="append", type=str,
        help="with --model-control-mode explicit, a model to load at start-up; repeatable, * for all "
             "(SERVING_LOAD_MODEL takes a comma-separated list)")
    add("--repository-poll-secs", type=_positive_float,
        help="with --model-control-mode poll, seconds between repository scans (default 15)")
    add("--strict-readiness", type=_bool,
        help="true: ready only once every start-up model is ready; false: ready once loading has been "
             "tried (default true)")
    add("--http-header-timeout-secs", type=_positive_float,
        help="a connection must send a complete request header within this many seconds of opening or of "
             "its previous response, else it is closed; also the keep-alive idle timeout, so keep it above the "
             "idle timeout of the clients' connection pools (the sidecar's is 30) (default 60)")
    add("--http-body-timeout-secs", type=_positive_float,
        help="a request body must arrive whole within this many seconds, else 408 (default 60)")
    add("--max-connections", type=_non_negative_int,
        help="open connections per port (HTTP, gRPC, metrics); past it new connections are closed at once "
             "(default 1024; 0: no cap)")
    add("--admission-wait-secs", type=_non_negative_float,
        help="how long a request that finds its model's queue full (max_queue_size) waits for a place, "
             "before its body is read, until it gets 503 (default 1; 0: 503 at once, as Triton does)")
    restrict = (f"a request to these API groups ({', '.join(GROUPS)}) needs the header <key>=<value>; "
                "repeatable, a group in one restriction only (SERVING_* takes several separated by ';')")
    add("--http-restricted-api", action=_Restrict, metavar="<groups>:<key>=<value>",
        help=f"as Triton's: {restrict}; others get 403 (default: nothing restricted)")
    add("--grpc-restricted-protocol", action=_Restrict, metavar="<groups>:<key>=<value>",
        help=f"as Triton's: {restrict}, as the metadata {GRPC_HEADER_PREFIX}<key>; others get PERMISSION_DENIED "
             "(default: nothing restricted)")
    return parser


def env_name(prefix: str, action: argparse.Action) -> str:
    """A flag's environment variable: ``--http-port`` with prefix ``SERVING_`` ↔ ``SERVING_HTTP_PORT``."""
    return prefix + action.option_strings[-1].lstrip("-").upper().replace("-", "_")


def flag_values(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str],
                prefix: str) -> dict[str, object]:
    """Every flag given on the command line or in the environment, by destination.

    The command line wins. An environment value is converted and checked as argparse
    checks a flag (its ``type`` and ``choices``); a repeatable flag takes several values
    separated by commas or spaces. A bad value exits with a usage message naming the variable.
    Shared by every entrypoint (serve, the sidecar, the injector).
    """
    values: dict[str, object] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public iterator
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        raw = environ.get(env_name(prefix, action), "").strip()
        if value is None and raw:
            name = env_name(prefix, action)
            repeatable = isinstance(action, argparse._AppendAction)  # noqa: SLF001
            items = [item for item in re.split(r"[,\s]+", raw) if item] if repeatable else [raw]
            try:
                converted = [action.type(item) if action.type else item for item in items]  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{name}={raw!r}: {exc}")
            if action.choices and any(item not in action.choices for item in converted):
                parser.error(f"{name}={raw!r}: choose from {', '.join(action.choices)}")
            value = converted if repeatable else converted[0]
        if value is not None:
            values[action.dest] = tuple(value) if isinstance(value, list) else value
    return values


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error."""
    parser = build_parser()
    values = flag_values(parser, parser.parse_args(argv), os.environ if environ is None else environ, ENV_PREFIX)
    if "model_repository" not in values:
        parser.error("--model-repository (or SERVING_MODEL_REPOSITORY) is required")
    if values.get("load_model") and values.get("model_control_mode", "none") != "explicit":
        parser.error("--load-model needs --model-control-mode explicit (the other modes load every model)")
    for dest in ("http_restricted_api", "grpc_restricted_protocol"):
        if dest in values:
            flag = dest.replace("_", "-")
            try:
                values[dest] = _access_policy(values[dest])  # type: ignore[arg-type]  # str or tuple of str
            except ValueError as exc:  # the value is not shown: it holds the key's value
                parser.error(f"--{flag} (or {ENV_PREFIX}{dest.upper()}): {exc}")
    return Settings(**values)  # type: ignore[arg-type]
