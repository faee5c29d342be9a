"""Whether the cluster runs native sidecars, asked once at start-up.

An AdmissionReview does not say which Kubernetes version sent it, so ``--native-sidecars
auto`` reads the API server's ``/version`` when the injector starts. Native sidecars (an
init container with ``restartPolicy: Always``) are beta and on by default from 1.29. An
older API server drops the field it does not know, which would leave a sidecar that never
exits in front of the model's start, so whenever the answer is unknown the injector adds a
plain container instead.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

NATIVE_SIDECARS_SINCE = (1, 29)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
log = logging.getLogger("sidecar.injector")


def parse_version(info: Mapping[str, Any]) -> tuple[int, int]:
    """``{"major": "1", "minor": "30+"}`` (the body of ``/version``) → ``(1, 30)``."""
    try:
        major = re.match(r"\d+", str(info["major"]))
        minor = re.match(r"\d+", str(info["minor"]))
    except KeyError as exc:
        raise ValueError(f"/version has no {exc.args[0]!r}") from None
    if not major or not minor:
        raise ValueError(f"/version says major={info['major']!r} minor={info['minor']!r}: not numbers")
    return int(major.group()), int(minor.group())


async def server_version(url: str, ssl_context: ssl.SSLContext | bool = True, token: str | None = None,
                         timeout: float = 5.0) -> tuple[int, int]:
    """GET ``{url}/version``; raises on any failure."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(f"{url.rstrip('/')}/version", headers=headers, ssl=ssl_context) as answer:
        answer.raise_for_status()
        return parse_version(await answer.json())


def in_cluster(environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> tuple[str, ssl.SSLContext, str | None]:
    """The API server's URL, TLS context and token, from a pod's environment and service account."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise LookupError("KUBERNETES_SERVICE_HOST is not set: not running in a cluster")
    host = f"[{host}]" if ":" in host else host
    context = ssl.create_default_context(cafile=str(account / "ca.crt"))
    token_file = account / "token"
    token = token_file.read_text().strip() if token_file.exists() else None
    return f"https://{host}:{port}", context, token


async def native_sidecars(mode: str, environ: Mapping[str, str] | None = None,
                          account: Path = SERVICE_ACCOUNT) -> bool:
    """Resolve ``--native-sidecars``: ``on``, ``off``, or ``auto`` (ask the API server)."""
    if mode != "auto":
        return mode == "on"
    try:
        url, context, token = in_cluster(os.environ if environ is None else environ, account)
        version = await server_version(url, context, token)
    except Exception as exc:  # noqa: BLE001 - any failure means "unknown": the safe choice follows
        log.warning("cannot tell the Kubernetes version (%s): injecting plain sidecar containers; "
                    "set --native-sidecars on to force native sidecars", exc)
        return False
    native = version >= NATIVE_SIDECARS_SINCE
    log.info("Kubernetes %d.%d: %s", *version, "native sidecars" if native else "plain sidecar containers")
    return native
