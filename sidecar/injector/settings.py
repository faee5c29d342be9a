"""Start-up settings of the injector: the only place that reads its argv and environment.

Every flag also has an ``INJECTOR_*`` environment variable (``--sidecar-image`` ↔
``INJECTOR_SIDECAR_IMAGE``); a flag wins over the environment. ``--exclude-namespace``
repeats; in the environment, ``INJECTOR_EXCLUDE_NAMESPACE`` takes a comma-separated list.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.settings import flag_values  # one reading of flags and environment for every entrypoint

ENV_PREFIX = "INJECTOR_"
NATIVE_MODES = ("auto", "on", "off")
ON_ERROR = ("allow", "deny")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Namespaces of the control plane: a pod there never gets a sidecar, whatever it asks for.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the injector is started with, parsed once."""

    tls_cert: Path
    tls_key: Path
    sidecar_image: str
    host: str = "0.0.0.0"
    port: int = 8443
    exclude_namespaces: tuple[str, ...] = SYSTEM_NAMESPACES
    native_sidecars: str = "auto"  # auto: on when the API server is 1.29 or newer
    on_error: str = "allow"  # allow: admit the pod unchanged, with a warning; deny: refuse it
    sidecar_cpu: str = "100m"
    sidecar_memory: str = "256Mi"
    cert_reload_secs: float = 10.0
    log_format: str = "text"
    log_level: str = "info"


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0..65535 (0 picks a free port)")
    return port


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 seconds")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.injector",
        description="Mutating admission webhook: adds the shadowserve sidecar to pods that opt in with the "
                    "label or annotation shadowserve.io/inject: \"true\".",
        epilog="Every flag can also be set with an INJECTOR_* environment variable, e.g. --sidecar-image as "
               "INJECTOR_SIDECAR_IMAGE. Flags win over the environment.",
    )
    add = parser.add_argument
    add("--tls-cert", type=Path, help="PEM certificate chain served to the API server (required)")
    add("--tls-key", type=Path, help="PEM private key of --tls-cert (required)")
    add("--sidecar-image", help="image of the injected sidecar container (required)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=_port, help="HTTPS port (default 8443; 0 picks a free port)")
    add("--exclude-namespace", action="append", dest="exclude_namespaces", metavar="NAMESPACE",
        help="never inject pods of this namespace (repeatable; default kube-system, kube-public, "
             "kube-node-lease; the system namespaces are always excluded)")
    add("--native-sidecars", choices=NATIVE_MODES,
        help="inject the sidecar as a native sidecar (an init container with restartPolicy: Always): on, off, "
             "or auto, on when the API server is Kubernetes 1.29 or newer (default auto)")
    add("--on-error", choices=ON_ERROR,
        help="when a pod cannot be injected (a bad annotation, or an error of the injector): allow admits it "
             "unchanged with a warning, deny refuses it (default allow)")
    add("--sidecar-cpu", help="CPU request of the sidecar (default 100m)")
    add("--sidecar-memory", help="memory request and limit of the sidecar (default 256Mi)")
    add("--cert-reload-secs", type=_positive_seconds,
        help="how often the certificate files are checked for a change (default 10)")
    add("--log-format", choices=LOG_FORMATS, help="text or json, one object a line (default text)")
    add("--log-level", choices=LOG_LEVELS, help="debug, info, warning or error (default info)")
    return parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error.

    Example::

        settings = parse(["--tls-cert", "tls.crt", "--tls-key", "tls.key", "--sidecar-image", "sidecar:1"])
    """
    parser = build_parser()
    values = flag_values(parser, parser.parse_args(argv), os.environ if environ is None else environ, ENV_PREFIX)
    for required in ("tls_cert", "tls_key", "sidecar_image"):
        if not values.get(required):
            flag = "--" + required.replace("_", "-")
            parser.error(f"{flag} (or {ENV_PREFIX}{required.upper()}) is required")
    excluded = values.get("exclude_namespaces")
    if excluded is not None:
        values["exclude_namespaces"] = tuple(dict.fromkeys([*SYSTEM_NAMESPACES, *excluded]))  # type: ignore[misc]
    return Settings(**values)  # type: ignore[arg-type]
