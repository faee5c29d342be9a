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

# Pure: how every entrypoint reads its flags and environment, and the log options.
from serving.flags import (
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    Flag,
    Flags,
    log_flags,
    port,
    positive_int,
    positive_seconds,
    seconds,
    size_text,
)

from .converters import grpc_target, header_name, host_port, http_url, size
from .file import DriftConfig, PrimaryConfig

ENV_PREFIX = "SIDECAR_"
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
    log_format: str = DEFAULT_LOG_FORMAT
    log_level: str = DEFAULT_LOG_LEVEL
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
    registry_uri: str | None = None  # None: MLFLOW_REGISTRY_URI, MLFLOW_TRACKING_URI, else ./registry
    registry_flush_secs: float = 5.0  # on SIGTERM, how long queued registry writes may take

    def admin_bearer(self) -> str | None:
        """The admin API's bearer token: ``--admin-token``, else the first line of ``--admin-token-file``."""
        if self.admin_token:
            return self.admin_token
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip() or None
        return None


def parse_address(value: str, default_host: str = "0.0.0.0") -> Address:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT``."""
    return Address(*host_port(value, default_host))


def _grpc_listen(value: str) -> Address | str:
    return "off" if value.lower() == "off" else parse_address(value)


def _admin_listen(value: str) -> Address | str:
    return "off" if value.lower() == "off" else parse_address(value, default_host="127.0.0.1")


def _split_number(value: str) -> tuple[str, float | None, str]:
    """``URL@NUMBER`` as the URL, the number and its text; ``URL`` alone as the URL, None and ""."""
    head, at, tail = value.rpartition("@")
    if at:
        try:
            return head, float(tail), tail
        except ValueError:
            pass  # an '@' of the URL itself (user@host): no number given
    return value, None, ""


def parse_shadow(value: str) -> ShadowFlag:
    """``NAME=URL[@FRACTION]``, e.g. ``v2=http://10.0.0.7:8000@0.25``."""
    name, sep, rest = value.partition("=")
    if not sep or not _NAME.match(name) or not rest:
        raise ValueError(
            f"{value!r} is not NAME=URL[@FRACTION]: e.g. v2=http://127.0.0.1:9000@0.5 (a name of letters, digits, "
            "'.', '_' or '-')")
    if name in ("primary", "canary"):
        raise ValueError(f"--shadow {value!r}: {name!r} names the {name} in the records; give the shadow another name")
    url, given, tail = _split_number(rest)
    fraction = ShadowFlag.fraction if given is None else given
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"shadow {name!r}: fraction {tail} is outside 0..1")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"shadow {name!r}: {url!r} is not an http:// or https:// URL")
    return ShadowFlag(name, url.rstrip("/"), fraction)


def parse_canary(value: str) -> CanaryFlag:
    """``URL[@WEIGHT]``, WEIGHT in percent (0..100, fractions allowed), e.g. ``http://model-v2:8000@10``."""
    url, weight, tail = _split_number(value)
    if weight is not None and not 0.0 <= weight <= 100.0:
        raise ValueError(f"--canary {value!r}: weight {tail} is outside 0..100 (percent)")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--canary {value!r} is not URL[@WEIGHT]: e.g. http://model-v2:8000@10")
    return CanaryFlag(url.rstrip("/"), weight)


def _header_pattern(value: str) -> str:
    """A header name, or a prefix ending in ``*`` (``x-corp-auth-*``)."""
    if value.endswith("*") and len(value) > 1:
        return header_name(value[:-1]) + "*"
    return header_name(value)


def _flags() -> Flags:
    return Flags(
        "sidecar", "Proxy KServe v2 traffic to the primary model server (or a weighted canary), mirror it to "
                   "shadow models and record the primary/shadow pairs.",
        "Every flag can also be set with a SIDECAR_* environment variable, e.g. --record-dir as SIDECAR_RECORD_DIR; "
        "SIDECAR_SHADOW takes several shadows separated by commas. Flags win over the environment, which wins over "
        "the --config file.",
        ENV_PREFIX, Settings, [
            Flag("--listen", "HTTP listen address (default {default})", parse_address),
            Flag("--grpc-listen", "gRPC listen address, or off (default {default})", _grpc_listen),
            Flag("--primary", f"the primary's HTTP URL (default {PrimaryConfig.http})", http_url),
            Flag("--primary-grpc", f"the primary's gRPC HOST:PORT (default {PrimaryConfig.grpc})", grpc_target),
            Flag("--shadow", f"mirror requests to this shadow (repeatable; FRACTION 0..1, default "
                 f"{ShadowFlag.fraction:g}); gRPC upstreams and other options of a shadow go in the --config file",
                 parse_shadow, dest="shadows", metavar="NAME=URL[@FRACTION]", repeatable=True),
            Flag("--record-dir", "write primary/shadow records as Parquet segments here (default: off)", Path),
            Flag("--metrics-port", "port of /metrics, /healthz and /readyz (default {default})", port),
            Flag("--config", "YAML or JSON configuration file, re-read when it changes (and on SIGHUP)", Path,
                 dest="config_file"),
            Flag("--config-poll-secs", "how often the --config file is checked (default {default})", positive_seconds),
            Flag("--drain-timeout-secs", "on SIGTERM, how long to keep proxying while the primary drains "
                 "(default {default})", seconds),
            Flag("--shadow-drain-secs", "on SIGTERM, how long pending shadow requests may take before they are "
                 "cancelled (default {default})", seconds),
            Flag("--canary", "send WEIGHT percent of inference requests (sticky by key) to this HTTP upstream; the "
                 "analysis and other options of the canary go in the --config file", parse_canary,
                 metavar="URL[@WEIGHT]"),
            Flag("--canary-grpc", "the canary's gRPC upstream", grpc_target, metavar="HOST:PORT"),
            Flag("--sticky-header", "the header (gRPC: metadata key) whose value keeps a user on one upstream, e.g. "
                 "x-user-id (default: the request id, else random)", header_name, metavar="NAME"),
            Flag("--admin-listen", "admin API (GET /sidecar/status, POST /sidecar/canary, /sidecar/rollback, "
                 "/sidecar/promote), or off (default {default})", _admin_listen, metavar="HOST:PORT"),
            Flag("--admin-token", "bearer token the admin API requires (prefer SIDECAR_ADMIN_TOKEN or "
                 "--admin-token-file: a flag shows in the process list)", metavar="TOKEN"),
            Flag("--admin-token-file", "read the admin API's bearer token from this file", Path, metavar="FILE"),
            Flag("--drift-profile", "reference profile (shadowserve-drift profile) for the live drift gauges "
                 "(default: off)", Path, metavar="FILE"),
            Flag("--drift-window", f"predictions per output in the live drift window (default {DriftConfig.window})",
                 positive_int, metavar="N"),
            Flag("--shadow-memory-budget-bytes", "memory all shadow copies may hold at once, request bodies and "
                 "responses being read; a copy over it is not sent, a response over it abandoned, both counted "
                 "(default {default})", size, metavar="BYTES", show=size_text),
            Flag("--shadow-headers-remove", "also remove this header (or NAME* prefix) from every shadow copy, "
                 "beside the default credential headers (repeatable)", _header_pattern, metavar="NAME",
                 repeatable=True),
            Flag("--shadow-headers-allow", "allow-list mode: shadow copies carry only these headers (repeatable), "
                 "and what a v2 request needs", header_name, metavar="NAME", repeatable=True),
            Flag("--header-timeout-secs", "close a client connection whose request head has not arrived in this "
                 "time (default {default})", positive_seconds),
            Flag("--body-timeout-secs", "close a client connection whose request body has not arrived this long "
                 "after its head (default {default})", positive_seconds),
            Flag("--idle-timeout-secs", "close a keep-alive client connection idle this long (default {default})",
                 positive_seconds),
            Flag("--max-connections", "client connections open at once on the HTTP listener; more are answered 503 "
                 "and closed (default {default})", positive_int),
            Flag("--admin-max-connections", "the same for the metrics and admin listeners, each (default {default})",
                 positive_int),
            Flag("--grpc-max-connection-idle-secs", "close (GOAWAY) a gRPC client connection with no call for this "
                 "long (default {default})", positive_seconds),
            Flag("--grpc-max-concurrent-streams", "calls at once on one gRPC client connection (default {default})",
                 positive_int),
            Flag("--registry-uri", "the model registry that canary decisions are written to, opened only when the "
                 "canary or a shadow names a model (models:/NAME@ALIAS); default: MLFLOW_REGISTRY_URI, else "
                 "MLFLOW_TRACKING_URI, else the embedded one under ./registry", metavar="URI"),
            Flag("--registry-flush-secs", "on SIGTERM, how long queued registry writes may take before they are "
                 "dropped (default {default})", seconds),
            *log_flags(),
        ])


def build_parser() -> argparse.ArgumentParser:
    """The parser of the sidecar's flags (its ``--help``)."""
    return _flags().parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error."""
    flags = _flags()
    values = flags.values(argv, os.environ if environ is None else environ)
    values["admin_required"] = values.get("admin_listen", "off") != "off"
    for listener in ("grpc_listen", "admin_listen"):
        if values.get(listener) == "off":
            values[listener] = None
    names = [shadow.name for shadow in values.get("shadows", ())]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        flags.error(f"--shadow {', '.join(duplicates)} given more than once; give each shadow a distinct name")
    return Settings(**values)
