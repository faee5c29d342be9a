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

# Pure: how every entrypoint reads its flags and environment, and the log options.
from serving.flags import DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL, Flag, Flags, log_flags, port, positive_seconds

ENV_PREFIX = "INJECTOR_"
NATIVE_MODES = ("auto", "on", "off")
ON_ERROR = ("allow", "deny")
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
    log_format: str = DEFAULT_LOG_FORMAT
    log_level: str = DEFAULT_LOG_LEVEL


def _flags() -> Flags:
    return Flags(
        "python -m sidecar.injector", "Mutating admission webhook: adds the shadowserve sidecar to pods that opt in "
                                      "with the label or annotation shadowserve.io/inject: \"true\".",
        "Every flag can also be set with an INJECTOR_* environment variable, e.g. --sidecar-image as "
        "INJECTOR_SIDECAR_IMAGE. Flags win over the environment.",
        ENV_PREFIX, Settings, [
            Flag("--tls-cert", "PEM certificate chain served to the API server", Path, required=True),
            Flag("--tls-key", "PEM private key of --tls-cert", Path, required=True),
            Flag("--sidecar-image", "image of the injected sidecar container", required=True),
            Flag("--host", "address to listen on (default {default})"),
            Flag("--port", "HTTPS port (default {default}; 0 picks a free port)", port),
            Flag("--exclude-namespace", "never inject pods of this namespace (repeatable; default {default}; the "
                 "system namespaces are always excluded)", dest="exclude_namespaces", metavar="NAMESPACE",
                 repeatable=True),
            Flag("--native-sidecars", "inject the sidecar as a native sidecar (an init container with restartPolicy: "
                 "Always): on, off, or auto, on when the API server is Kubernetes 1.29 or newer (default {default})",
                 choices=NATIVE_MODES),
            Flag("--on-error", "when a pod cannot be injected (a bad annotation, or an error of the injector): allow "
                 "admits it unchanged with a warning, deny refuses it (default {default})", choices=ON_ERROR),
            Flag("--sidecar-cpu", "CPU request of the sidecar (default {default})"),
            Flag("--sidecar-memory", "memory request and limit of the sidecar (default {default})"),
            Flag("--cert-reload-secs", "how often the certificate files are checked for a change (default {default})",
                 positive_seconds),
            *log_flags(),
        ])


def build_parser() -> argparse.ArgumentParser:
    """The parser of the injector's flags (its ``--help``)."""
    return _flags().parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from argv and the environment; exits with a usage message on error.

    Example::

        settings = parse(["--tls-cert", "tls.crt", "--tls-key", "tls.key", "--sidecar-image", "sidecar:1"])
    """
    values = _flags().values(argv, os.environ if environ is None else environ)
    excluded = values.get("exclude_namespaces")
    if excluded is not None:
        values["exclude_namespaces"] = tuple(dict.fromkeys([*SYSTEM_NAMESPACES, *excluded]))
    return Settings(**values)
