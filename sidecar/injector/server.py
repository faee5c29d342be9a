"""The webhook's HTTPS server: ``POST /mutate`` (AdmissionReview v1), ``GET /healthz`` and ``/readyz``.

The certificate follows its files: cert-manager and the kubelet replace a mounted Secret
by swapping a symlink, with no event a portable program can wait on, so the files are
checked (one ``stat`` each) every ``--cert-reload-secs`` and a changed pair is loaded into
the live TLS context, which new connections use. A pair that does not load (say, the
certificate already new and the key not yet) keeps the previous one until the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
from pathlib import Path

from aiohttp import web

from .annotations import Policy
from .cluster import native_sidecars
from .review import ReviewError, admit, parse
from .settings import Settings

# The API server sends at most its request size limit (3 MiB) plus the review around it.
MAX_BODY_BYTES = 4 * 1024 * 1024
log = logging.getLogger("sidecar.injector")


class CertificateReloader:
    """A server TLS context whose certificate and key are re-read when their files change."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._files()
        self.context.load_cert_chain(cert, key)  # a bad pair at start-up is fatal: raise

    def _files(self) -> tuple[tuple[int, int, int, int], ...]:
        return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, (self.cert, self.key)))

    def reload_if_changed(self) -> bool:
        """Load the files into the context if they changed and form a valid pair; True if loaded."""
        try:
            stamp = self._files()
            if stamp == self._stamp:
                return False
            # Check the pair on a scratch context first: a failed load can leave a context half-changed.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("certificate not reloaded, keeping the previous one: %s", exc)
            return False
        self._stamp = stamp
        log.info("certificate reloaded from %s", self.cert)
        return True

    async def watch(self, interval: float) -> None:
        """Check the files every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


def build_app(policy: Policy, on_error: str) -> web.Application:
    """The webhook's routes, answering with ``policy``."""

    async def mutate(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": f"Content-Type {request.content_type!r}: send application/json"},
                                     status=415)
        try:
            review = parse(await request.read())
        except ReviewError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(admit(review, policy, on_error))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    return app


@dataclasses.dataclass
class Injector:
    """A running injector; `stop` it."""

    runner: web.AppRunner
    reloader: CertificateReloader
    watcher: asyncio.Task[None]
    policy: Policy
    port: int

    async def stop(self) -> None:
        self.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watcher
        await self.runner.cleanup()


async def start(settings: Settings) -> Injector:
    """Start serving; ``settings.port`` 0 picks a free port (see `Injector.port`).

    Example::

        injector = await start(parse(["--tls-cert", "tls.crt", "--tls-key", "tls.key", "--sidecar-image", "s:1"]))
        ...
        await injector.stop()
    """
    reloader = CertificateReloader(settings.tls_cert, settings.tls_key)
    policy = Policy(image=settings.sidecar_image, native=await native_sidecars(settings.native_sidecars),
                    exclude_namespaces=frozenset(settings.exclude_namespaces), cpu=settings.sidecar_cpu,
                    memory=settings.sidecar_memory)
    runner = web.AppRunner(build_app(policy, settings.on_error), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=reloader.context)
    await site.start()
    port = int(runner.addresses[0][1])
    watcher = asyncio.create_task(reloader.watch(settings.cert_reload_secs), name="certificate-reloader")
    log.info("listening https=%s:%d native_sidecars=%s on_error=%s sidecar_image=%s", settings.host, port,
             str(policy.native).lower(), settings.on_error, policy.image)
    return Injector(runner=runner, reloader=reloader, watcher=watcher, policy=policy, port=port)


async def serve_until_signal(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    injector = await start(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await injector.stop()
    return 0
