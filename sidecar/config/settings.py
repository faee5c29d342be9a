"""Start-up settings: the only place that reads argv and the environment.

Every flag also has a ``SIDECAR_*`` environment variable (``--record-dir`` ↔
``SIDECAR_RECORD_DIR``); a flag wins over the environment. ``--shadow`` repeats; in the
environment, ``SIDECAR_SHADOW`` holds several shadows separated by commas or spaces.
What can change at run time (upstreams, shadows, the canary, sampling, what is recorded) lives in
the configuration file (`sidecar.config.file`); flags given here override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.settings import flag_values  # one reading of flags and environment for every entrypoint

ENV_PREFIX = "SIDECAR_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class Address:
    """A listen address; port 0 picks a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class ShadowFlag:
    """One ``--shadow NAME=URL[@FRACTION]``: a shadow with an HTTP upstream."""

    name: str
    url: str
    fraction: float = 1.0


@dataclasses.dataclass(frozen=True)
class CanaryFlag:
    """``--canary URL[@WEIGHT]``: the canary's HTTP upstream and, when given, its weight in percent."""

    url: str
    weight: float | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the sidecar is started with, parsed once.

    ``primary``, ``primary_grpc``, ``shadows``, ``record_dir``, the ``canary*`` and the
    ``drift*`` fields are overrides: ``None`` (or empty) leaves the value to the
    configuration file, then to the default.
    """

    listen: Address = Address("0.0.0.0", 8080)
    grpc_listen: Address | None = Address("0.0.0.0", 8081)  # None: no gRPC listener
    metrics_port: int = 9090
    config_file: Path | None = None
    primary: str | None = None
    primary_grpc: str | None = None
    shadows: tuple[ShadowFlag, ...] = ()
    record_dir: Path | None = None
    drain_timeout_secs: float = 30.0
    shadow_drain_secs: float = 5.0
    config_poll_secs: float = 2.0
    log_format: str = "text"
    log_level: str = "info"
    canary: CanaryFlag | None = None
    canary_grpc: str | None = None
    sticky_header: str | None = None
    admin_listen: Address | None = Address("127.0.0.1", 9091)  # None: no admin API
    admin_required: bool = False  # --admin-listen given: failing to listen stops the start
    admin_token: str | None = None
    admin_token_file: Path | None = None
    drift_profile: Path | None = None
    drift_window: int | None = None
    shadow_memory_budget_bytes: int = 128 * 1024 * 1024  # request bodies and responses held for copies, all shadows
    shadow_headers_remove: tuple[str, ...] = ()  # added to every shadow's deny-list
    shadow_headers_allow: tuple[str, ...] | None = None  # allow-list mode for every shadow
    header_timeout_secs: float = 10.0  # a client's request head must arrive within this
    body_timeout_secs: float = 60.0  # ... and its body within this after the head
    idle_timeout_secs: float = 75.0  # an idle keep-alive connection is closed after this
    max_connections: int = 4096  # open client connections on the HTTP listener; more are answered 503
    admin_max_connections: int = 64  # on the metrics and admin listeners each
    grpc_max_connection_idle_secs: float = 300.0  # a gRPC connection with no call for this long gets GOAWAY
    grpc_max_concurrent_streams: int = 1024  # calls at once on one gRPC connection

    def admin_bearer(self) -> str | None:
        """The admin API's bearer token: ``--admin-token``, else the first line of ``--admin-token-file``."""
        if self.admin_token:
            return self.admin_token
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip() or None
        return None


def parse_address(value: str, default_host: str = "0.0.0.0") -> Address:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (port 0..65535; 0 picks a free port)")
    host = host.strip("[]") or default_host
    return Address(host, int(port))


def _grpc_listen(value: str) -> Address | str:
    return "off" if value.lower() == "off" else parse_address(value)


def _admin_listen(value: str) -> Address | str:
    return "off" if value.lower() == "off" else parse_address(value, default_host="127.0.0.1")


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0..65535 (0 picks a free port)")
    return port


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a number of seconds, 0 or more")
    return number


def _positive_seconds(value: str) -> float:
    number = _seconds(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 seconds")
    return number


def parse_shadow(value: str) -> ShadowFlag:
    """``NAME=URL[@FRACTION]``, e.g. ``v2=http://10.0.0.7:8000@0.25``."""
    name, sep, rest = value.partition("=")
    if not sep or not _NAME.match(name) or not rest:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not NAME=URL[@FRACTION]: e.g. v2=http://127.0.0.1:9000@0.5 (a name of letters, digits, "
            "'.', '_' or '-')")
    if name in ("primary", "canary"):
        raise argparse.ArgumentTypeError(f"--shadow {value!r}: {name!r} names the {name} in the records; "
                                         "give the shadow another name")
    url, fraction = rest, 1.0
    head, at, tail = rest.rpartition("@")
    if at:
        try:
            fraction = float(tail)
        except ValueError:
            pass  # an '@' of the URL itself (user@host): no fraction given
        else:
            url = head
    if not 0.0 <= fraction <= 1.0:
        raise argparse.ArgumentTypeError(f"shadow {name!r}: fraction {tail} is outside 0..1")
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"shadow {name!r}: {url!r} is not an http:// or https:// URL")
    return ShadowFlag(name, url.rstrip("/"), fraction)


def parse_canary(value: str) -> CanaryFlag:
    """``URL[@WEIGHT]``, WEIGHT in percent (0..100, fractions allowed), e.g. ``http://model-v2:8000@10``."""
    url, weight = value, None
    head, at, tail = value.rpartition("@")
    if at:
        try:
            weight = float(tail)
        except ValueError:
            pass  # an '@' of the URL itself (user@host): no weight given
        else:
            url = head
    if weight is not None and not 0.0 <= weight <= 100.0:
        raise argparse.ArgumentTypeError(f"--canary {value!r}: weight {tail} is outside 0..100 (percent)")
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"--canary {value!r} is not URL[@WEIGHT]: e.g. http://model-v2:8000@10")
    return CanaryFlag(url.rstrip("/"), weight)


def _header(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a header name")
    return value.lower()


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return number


def _size(value: str) -> int:
    """Bytes, with an optional unit: 268435456, 256MiB, 1GiB, 500kB."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", value)
    units = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
    if not match or match.group(2).lower() not in units:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size: give bytes (268435456) or e.g. 256MiB, 1GiB")
    return int(match.group(1)) * units[match.group(2).lower()]


def _header_pattern(value: str) -> str:
    """A header name, or a prefix ending in ``*`` (``x-corp-auth-*``)."""
    if value.endswith("*") and len(value) > 1:
        return _header(value[:-1]) + "*"
    return _header(value)


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def _target(value: str) -> str:
    parse_address(value, default_host="127.0.0.1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Proxy KServe v2 traffic to the primary model server (or a weighted canary), mirror it to "
                    "shadow models and record the primary/shadow pairs.",
        epilog="Every flag can also be set with a SIDECAR_* environment variable, e.g. --record-dir as "
               "SIDECAR_RECORD_DIR; SIDECAR_SHADOW takes several shadows separated by commas. Flags win over the "
               "environment, which wins over the --config file.",
    )
    add = parser.add_argument
    add("--listen", type=parse_address, help="HTTP listen address (default 0.0.0.0:8080)")
    add("--grpc-listen", type=_grpc_listen, help="gRPC listen address, or off (default 0.0.0.0:8081)")
    add("--primary", type=_url, help="the primary's HTTP URL (default http://127.0.0.1:8000)")
    add("--primary-grpc", type=_target, help="the primary's gRPC HOST:PORT (default 127.0.0.1:8001)")
    add("--shadow", type=parse_shadow, action="append", dest="shadows", metavar="NAME=URL[@FRACTION]",
        help="mirror requests to this shadow (repeatable; FRACTION 0..1, default 1); gRPC upstreams and other "
             "options of a shadow go in the --config file")
    add("--record-dir", type=Path, help="write primary/shadow records as Parquet segments here (default: off)")
    add("--metrics-port", type=_port, help="port of /metrics, /healthz and /readyz (default 9090)")
    add("--config", type=Path, dest="config_file",
        help="YAML or JSON configuration file, re-read when it changes (and on SIGHUP)")
    add("--config-poll-secs", type=_positive_seconds, help="how often the --config file is checked (default 2)")
    add("--drain-timeout-secs", type=_seconds,
        help="on SIGTERM, how long to keep proxying while the primary drains (default 30)")
    add("--shadow-drain-secs", type=_seconds,
        help="on SIGTERM, how long pending shadow requests may take before they are cancelled (default 5)")
    add("--canary", type=parse_canary, metavar="URL[@WEIGHT]",
        help="send WEIGHT percent of inference requests (sticky by key) to this HTTP upstream; the analysis and "
             "other options of the canary go in the --config file")
    add("--canary-grpc", type=_target, metavar="HOST:PORT", help="the canary's gRPC upstream")
    add("--sticky-header", type=_header, metavar="NAME",
        help="the header (gRPC: metadata key) whose value keeps a user on one upstream, e.g. x-user-id (default: "
             "the request id, else random)")
    add("--admin-listen", type=_admin_listen, metavar="HOST:PORT",
        help="admin API (GET /sidecar/status, POST /sidecar/canary, /sidecar/rollback, /sidecar/promote), or off "
             "(default 127.0.0.1:9091)")
    add("--admin-token", metavar="TOKEN",
        help="bearer token the admin API requires (prefer SIDECAR_ADMIN_TOKEN or --admin-token-file: a flag shows in "
             "the process list)")
    add("--admin-token-file", type=Path, metavar="FILE", help="read the admin API's bearer token from this file")
    add("--drift-profile", type=Path, metavar="FILE",
        help="reference profile (shadowserve-drift profile) for the live drift gauges (default: off)")
    add("--drift-window", type=_positive_int, metavar="N",
        help="predictions per output in the live drift window (default 10000)")
    add("--shadow-memory-budget-bytes", type=_size, metavar="BYTES",
        help="memory all shadow copies may hold at once, request bodies and responses being read; a copy over it is "
             "not sent, a response over it abandoned, both counted (default 128MiB)")
    add("--shadow-headers-remove", type=_header_pattern, action="append", metavar="NAME",
        help="also remove this header (or NAME* prefix) from every shadow copy, beside the default credential "
             "headers (repeatable)")
    add("--shadow-headers-allow", type=_header, action="append", metavar="NAME",
        help="allow-list mode: shadow copies carry only these headers (repeatable), and what a v2 request needs")
    add("--header-timeout-secs", type=_positive_seconds,
        help="close a client connection whose request head has not arrived in this time (default 10)")
    add("--body-timeout-secs", type=_positive_seconds,
        help="close a client connection whose request body has not arrived this long after its head (default 60)")
    add("--idle-timeout-secs", type=_positive_seconds,
        help="close a keep-alive client connection idle this long (default 75)")
    add("--max-connections", type=_positive_int,
        help="client connections open at once on the HTTP listener; more are answered 503 and closed (default 4096)")
    add("--admin-max-connections", type=_positive_int,
        help="the same for the metrics and admin listeners, each (default 64)")
    add("--grpc-max-connection-idle-secs", type=_positive_seconds,
        help="close (GOAWAY) a gRPC client connection with no call for this long (default 300)")
    add("--grpc-max-concurrent-streams", type=_positive_int,
        help="calls at once on one gRPC client connection (default 1024)")
    add("--log-format", choices=LOG_FORMATS, help="text or json, one object a line (default text)")
    add("--log-level", choices=LOG_LEVELS, help="debug, info, warning or error (default info)")
    return parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error."""
    parser = build_parser()
    values = flag_values(parser, parser.parse_args(argv), os.environ if environ is None else environ, ENV_PREFIX)
    values["admin_required"] = values.get("admin_listen", "off") != "off"
    for listener in ("grpc_listen", "admin_listen"):
        if values.get(listener) == "off":
            values[listener] = None
    shadows = values.get("shadows", ())
    names = [shadow.name for shadow in shadows]  # type: ignore[attr-defined]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        parser.error(f"--shadow {', '.join(duplicates)} given more than once; give each shadow a distinct name")
    return Settings(**values)  # type: ignore[arg-type]
