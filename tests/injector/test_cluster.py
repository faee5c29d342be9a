"""--native-sidecars auto: the API server's /version, asked over TLS with the service account."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from sidecar.injector.cluster import native_sidecars, parse_version

from .tls import pem, server_cert


@pytest.mark.parametrize(("info", "version"), [({"major": "1", "minor": "29"}, (1, 29)),
                                               ({"major": "1", "minor": "30+"}, (1, 30)),
                                               ({"major": "2", "minor": "0", "gitVersion": "v2.0.0"}, (2, 0))])
def test_parse_version(info: dict[str, str], version: tuple[int, int]) -> None:
    assert parse_version(info) == version


@pytest.mark.parametrize("info", [{"major": "1"}, {"major": "one", "minor": "29"}])
def test_parse_version_rejects(info: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        parse_version(info)


def test_on_and_off_ask_nobody() -> None:
    assert asyncio.run(native_sidecars("on", environ={})) is True
    assert asyncio.run(native_sidecars("off", environ={})) is False


def test_auto_outside_a_cluster_is_plain() -> None:
    assert asyncio.run(native_sidecars("auto", environ={})) is False


@pytest.mark.parametrize(("status", "minor", "native"), [(200, "28", False), (200, "29", True), (200, "31+", True),
                                                         (403, "31", False)])
def test_auto_asks_the_api_server(tmp_path: Path, status: int, minor: str, native: bool) -> None:
    ca = trustme.CA()
    cert, key = pem(server_cert(ca))
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    (account / "token").write_text("secret-token\n")
    seen: list[str] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"major": "1", "minor": minor}, status=status)

    async def main() -> bool:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        app = web.Application()
        app.router.add_get("/version", version)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        port = runner.addresses[0][1]
        try:
            environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
            return await native_sidecars("auto", environ=environ, account=account)
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) is native
    assert seen == ["Bearer secret-token"]
