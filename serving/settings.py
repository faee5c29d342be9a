"""Typed settings of `serve`: the only place that reads its argv and environment.

Flags follow Triton's names; each flag also has a ``SERVING_*`` environment variable
(``--http-port`` ↔ ``SERVING_HTTP_PORT``). A flag given on the command line wins over
the environment, which wins over the default, written once: in `Settings` (the help shows
it). How flags and variables are read is `serving.flags`, shared with the sidecar.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .access import GROUPS, GRPC_HEADER_PREFIX, AccessPolicy, parse_restrictions
from .flags import (
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    Flag,
    Flags,
    boolean,
    log_flags,
    non_negative_int,
    port,
    positive_int,
    positive_seconds,
    seconds,
    size_text,
)
from .storage_urls import StoreUrl, repository_location

MiB = 1024 * 1024
ENV_PREFIX = "SERVING_"
CONTROL_MODES = ("none", "explicit", "poll")
STORAGE_VARIABLES = ("TRITON_CLOUD_CREDENTIAL_PATH", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                     "AZURE_STORAGE_AUTH_TYPE")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `serve` is configured with, parsed once at start-up."""

    model_repository: Path | StoreUrl | None = None  # required, unless model_source gives the models
    model_source: tuple[str, ...] = ()  # models:/NAME@ALIAS or models:/NAME/VERSION, as written by str(ModelUri)
    registry_uri: str | None = None  # None: MLflow's variables, then the embedded default (Registry.open)
    model_cache_dir: Path | None = None  # None: default_model_cache_dir()
    model_repository_max_bytes: int = 64 * 1024 * MiB  # a remote repository: its total size
    model_repository_max_files: int = 10_000  # ... how many files it may hold
    model_repository_timeout_secs: float = 30.0  # ... how long each call to its store may take
    # Triton's credential variables a remote repository reads (the SDKs read their own, AWS_* among them)
    storage_environ: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    device: str = "auto"
    cpu_threads: int = 0  # 0: one per CPU core, less one for the event loop
    switch_interval_us: int = 200  # the interpreter's thread switch interval (Python's own: 5000)
    # processes beside this one that take the HTTP and gRPC connections (serving.frontend); 0: none,
    # None: as many as the cores suggest (serving.cpus.default_frontend_workers)
    frontend_workers: int | None = None
    max_request_bytes: int = 64 * MiB
    exit_timeout_secs: float = 30.0
    log_format: str = DEFAULT_LOG_FORMAT
    log_level: str = DEFAULT_LOG_LEVEL
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
    server_name: str = "shadowserve"  # the server metadata's name; "triton" for clients that check it
    allow_client_shm: bool = False  # clients may register system shared memory regions (as Triton's flag)


def default_model_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where registry models are kept when --model-cache-dir is not given: the XDG cache, then shadowserve/models."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "shadowserve" / "models"


def _model_uri(value: str) -> str:
    # model_registry.uris is pure: no MLflow is imported until a registry is opened.
    from model_registry.errors import RegistryError
    from model_registry.uris import parse_model_uri

    try:
        return str(parse_model_uri(value))
    except RegistryError as exc:
        raise ValueError(str(exc)) from None


def _server_name(value: str) -> str:
    if not value or len(value) > 64 or not value.isprintable():
        raise ValueError(f"{value[:64]!r} is not a server name: use 1 to 64 printable characters, e.g. triton")
    return value


def _workers(value: str) -> int | None:
    return None if value == "auto" else non_negative_int(value)


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")


def _access_policy(texts: tuple[str, ...]) -> AccessPolicy:
    """Restrictions from the flag's uses, or from its environment variable (one value, ';' between several)."""
    return AccessPolicy.of(r for text in texts for r in parse_restrictions(text))


def _flags() -> Flags:
    restrict = (f"a request to these API groups ({', '.join(GROUPS)}) needs the header <key>=<value>; "
                "repeatable, a group in one restriction only (SERVING_* takes several separated by ';')")
    return Flags(
        "serve", "Serve the models of a model repository over the KServe v2 protocol.",
        "Every flag can also be set with a SERVING_* environment variable, e.g. --http-port as SERVING_HTTP_PORT. "
        "Flags win over the environment.",
        ENV_PREFIX, Settings, [
            Flag("--model-repository", "directory of <model>/config.pbtxt and <model>/<version>/, or one on object "
                 "storage, fetched into --model-cache-dir: s3://bucket/path, s3://[https://]host:port/bucket/path, "
                 "gs://bucket/path, as://account/container/path or az://container/path (required, unless "
                 "--model-source gives the models)", repository_location, metavar="DIR|URL"),
            Flag("--model-source", "a registry model to serve: models:/NAME@ALIAS (followed as the alias moves, with "
                 "--model-control-mode poll) or models:/NAME/VERSION; repeatable, one per model (SERVING_MODEL_SOURCE "
                 "takes several separated by ';' or spaces); instead of --model-repository", _model_uri,
                 metavar="URI", repeatable=True, split=r"[;\s]+"),
            Flag("--registry-uri", "the model registry of --model-source: sqlite:///PATH or a path (local), "
                 "http(s)://HOST (an mlflow server) (default: MLFLOW_REGISTRY_URI, else MLFLOW_TRACKING_URI, else "
                 "the embedded registry under ./registry)", metavar="URI"),
            Flag("--model-cache-dir", "where --model-source models are downloaded, verified and laid out as a model "
                 "repository, and where a --model-repository on object storage is copied (default: $XDG_CACHE_HOME "
                 "or ~/.cache, then shadowserve/models)", Path, metavar="DIR"),
            Flag("--model-repository-max-bytes", "a --model-repository on object storage larger than this is refused "
                 "before anything is fetched (default {default})", positive_int, metavar="BYTES",
                 show=lambda size: f"{size}, {size_text(size)}"),
            Flag("--model-repository-max-files", "a --model-repository on object storage holding more files than "
                 "this is refused (default {default})", positive_int, metavar="N"),
            Flag("--model-repository-timeout-secs", "each call to the object store of --model-repository (a "
                 "listing page, a read) must answer within this many seconds (default {default})",
                 positive_seconds, metavar="SECONDS"),
            Flag("--host", "address to listen on (default {default})"),
            Flag("--http-port", "KServe v2 HTTP port (default {default}; 0 picks a free port)", port),
            Flag("--grpc-port", "KServe v2 gRPC port (default {default}; 0 picks a free port)", port),
            Flag("--metrics-port", "Prometheus /metrics port (default {default}; 0 picks a free port)", port),
            Flag("--device", "auto (a GPU when present), cpu, cuda or cuda:N (default {default})", _device),
            Flag("--cpu-threads", "torch's intra-op threads for CPU compute; {default} (default) uses the cores less "
                 "one, which the event loop keeps", non_negative_int),
            Flag("--switch-interval-us", "how long, in microseconds, a thread may keep the Python interpreter "
                 "while another waits for it (sys.setswitchinterval). A model instance waits for it after every "
                 "batch; Python's 5000 lets a busy event loop hold the device idle for up to that long "
                 "(default {default})", positive_int, metavar="US"),
            Flag("--frontend-workers", "processes that share the HTTP and gRPC ports with this one, decode and "
                 "check requests and hand their tensors to this process through shared memory; 0 serves every "
                 "connection here; auto (the default): none below 4 cores, then one per 4 cores, at most 8",
                 _workers, metavar="N"),
            Flag("--max-request-bytes", "largest request body accepted; larger ones get 413 (default {default})",
                 positive_int, show=lambda size: f"{size}, {size_text(size)}"),
            Flag("--exit-timeout-secs", "on SIGTERM, how long in-flight and queued requests may take to finish "
                 "(default {default})", float),
            *log_flags(),
            Flag("--model-control-mode", "none: load every model, refuse load/unload requests; explicit: load only "
                 "--load-model, accept load/unload requests; poll: load every model and re-scan the repository "
                 "(default {default})", choices=CONTROL_MODES),
            Flag("--load-model", "with --model-control-mode explicit, a model to load at start-up; repeatable, * for "
                 "all (SERVING_LOAD_MODEL takes a comma-separated list)", repeatable=True),
            Flag("--repository-poll-secs", "with --model-control-mode poll, seconds between repository scans "
                 "(default {default})", positive_seconds),
            Flag("--strict-readiness", "true: ready only once every start-up model is ready; false: ready once "
                 "loading has been tried (default {default})", boolean),
            Flag("--http-header-timeout-secs", "a connection must send a complete request header within this many "
                 "seconds of opening or of its previous response, else it is closed; also the keep-alive idle "
                 "timeout, so keep it above the idle timeout of the clients' connection pools (the sidecar's is 30) "
                 "(default {default})", positive_seconds),
            Flag("--http-body-timeout-secs", "a request body must arrive whole within this many seconds, else 408 "
                 "(default {default})", positive_seconds),
            Flag("--max-connections", "open connections per port (HTTP, gRPC, metrics); past it new connections are "
                 "closed at once; with front-end workers each takes its share of the HTTP and gRPC caps "
                 "(default {default}; 0: no cap)", non_negative_int),
            Flag("--admission-wait-secs", "how long a request that finds its model's queue full (max_queue_size) "
                 "waits for a place, before its body is read, until it gets 503 (default {default}; 0: 503 at once, "
                 "as Triton does)", seconds),
            # Not split on commas in the environment: the group list has them.
            Flag("--http-restricted-api", f"as Triton's: {restrict}; others get 403 (default: nothing restricted)",
                 metavar="<groups>:<key>=<value>", repeatable=True, split=None),
            Flag("--grpc-restricted-protocol", f"as Triton's: {restrict}, as the metadata {GRPC_HEADER_PREFIX}<key>; "
                 "others get PERMISSION_DENIED (default: nothing restricted)",
                 metavar="<groups>:<key>=<value>", repeatable=True, split=None),
            Flag("--server-name", "the name server metadata answers with; triton for clients that check for "
                 "Triton's (default {default})", _server_name),
            Flag("--allow-client-shm", "as Triton's: clients on this host may register system shared memory "
                 "regions (/dev/shm objects the server then reads and writes) for inputs and outputs (default "
                 "{default})", boolean),
        ])


def build_parser() -> argparse.ArgumentParser:
    """The parser of `serve`'s flags (its ``--help``)."""
    return _flags().parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error."""
    flags = _flags()
    environ = os.environ if environ is None else environ
    values = flags.values(argv, environ)
    on_command_line = vars(flags.parser.parse_args(argv))
    if "model_source" in on_command_line and "model_repository" not in on_command_line:
        # flags win over variables: the model image's SERVING_MODEL_REPOSITORY=/models gives way to
        # `docker run IMAGE --model-source ...`; both on the command line is still refused at start-up
        values.pop("model_repository", None)
    # Triton's names, which no SDK reads by itself; AWS_* and GOOGLE_APPLICATION_CREDENTIALS their SDKs read
    values["storage_environ"] = {name: environ[name] for name in STORAGE_VARIABLES if environ.get(name)}
    if values.get("model_source"):  # giving --model-repository too is refused at start-up, as a ConfigError
        values.setdefault("model_cache_dir", default_model_cache_dir(environ))
    elif not values.get("model_repository"):
        flags.error(f"{flags.names('model_repository')} is required, unless --model-source gives the models")
    if values.get("load_model") and values.get("model_control_mode", Settings.model_control_mode) != "explicit":
        flags.error("--load-model needs --model-control-mode explicit (the other modes load every model)")
    for dest in ("http_restricted_api", "grpc_restricted_protocol"):
        if dest in values:
            try:
                values[dest] = _access_policy(values[dest])
            except ValueError as exc:  # the value is not shown: it holds the key's value
                flags.error(f"{flags.names(dest)}: {exc}")
    return Settings(**values)
