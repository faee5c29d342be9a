"""The real injector over TLS: started with `start`, driven with aiohttp and real AdmissionReviews."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import jsonpatch
import pytest
import trustme
import yaml

from sidecar.injector import start
from sidecar.injector.server import MAX_BODY_BYTES
from sidecar.injector.settings import Settings

from .test_mutators import GOLDEN, dump, review
from .tls import SecretVolume, client_context, pem, served_certificate, server_cert

Scenario = Callable[[str, aiohttp.ClientSession], Awaitable[None]]


@pytest.fixture()
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def volume(tmp_path: Path, ca: trustme.CA) -> SecretVolume:
    secret = SecretVolume(tmp_path / "tls")
    secret.write(*pem(server_cert(ca)))
    return secret


def settings(volume: SecretVolume, **overrides: object) -> Settings:
    values: dict[str, object] = {"tls_cert": volume.cert, "tls_key": volume.key, "host": "127.0.0.1", "port": 0,
                                 "sidecar_image": "registry.example.com/shadowserve/sidecar:0.1.0",
                                 "native_sidecars": "on", "cert_reload_secs": 0.05}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]  # fields of each type


def run(volume: SecretVolume, ca: trustme.CA, scenario: Scenario) -> None:
    """Start the injector, run the scenario with a client that trusts the CA, stop it."""

    async def main() -> None:
        injector = await start(settings(volume))
        try:
            connector = aiohttp.TCPConnector(ssl=client_context(ca), force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                await scenario(f"https://127.0.0.1:{injector.port}", session)
        finally:
            await injector.stop()

    asyncio.run(main())


def golden(name: str) -> dict:
    return yaml.safe_load((GOLDEN / f"{name}.in.yaml").read_text())


def test_admission_reviews_over_tls(volume: SecretVolume, ca: trustme.CA) -> None:
    async def scenario(url: str, session: aiohttp.ClientSession) -> None:
        pod = golden("annotation-opt-in")
        async with session.post(f"{url}/mutate", json=review(pod)) as answer:
            assert answer.status == 200 and answer.content_type == "application/json"
            body = await answer.json()
        patch = json.loads(base64.b64decode(body["response"]["patch"]))
        assert dump(jsonpatch.apply_patch(pod, patch)) == (GOLDEN / "annotation-opt-in.out.yaml").read_text()
        async with session.post(f"{url}/mutate", json=review(golden("not-opted-in"))) as answer:
            body = await answer.json()
        assert body["response"] == {"uid": review(pod)["request"]["uid"], "allowed": True}
        for path in ("/healthz", "/readyz"):
            async with session.get(f"{url}{path}") as answer:
                assert answer.status == 200

    run(volume, ca, scenario)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "error"), [
    ("POST", "/mutate", b"{truncated", {"Content-Type": "application/json"}, 400, "not JSON"),
    ("POST", "/mutate", b'{"apiVersion": "v1", "kind": "Pod"}', {"Content-Type": "application/json"}, 400,
     "is not supported"),
    ("POST", "/mutate", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
     {"Content-Type": "application/json"}, 400, "request.uid is missing"),
    ("POST", "/mutate", b"{}", {"Content-Type": "text/plain"}, 415, "send application/json"),
    ("POST", "/mutate", b"x" * (MAX_BODY_BYTES + 1), {"Content-Type": "application/json"}, 413, None),
    ("GET", "/mutate", b"", {}, 405, None),
    ("POST", "/validate", b"{}", {"Content-Type": "application/json"}, 404, None),
])
def test_malformed_requests(volume: SecretVolume, ca: trustme.CA, method: str, path: str, body: bytes,
                            headers: dict[str, str], status: int, error: str | None) -> None:
    async def scenario(url: str, session: aiohttp.ClientSession) -> None:
        async with session.request(method, f"{url}{path}", data=body, headers=headers) as answer:
            assert answer.status == status
            if error:
                assert error in (await answer.json())["error"]
        # The server is still fine afterwards.
        async with session.post(f"{url}/mutate", json=review(golden("canary"))) as answer:
            assert "patch" in (await answer.json())["response"]

    run(volume, ca, scenario)


def test_tls_is_required_and_verified(volume: SecretVolume, ca: trustme.CA) -> None:
    async def scenario(url: str, session: aiohttp.ClientSession) -> None:
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.post(url.replace("https", "http") + "/mutate", json={}) as answer:
                    await answer.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # signed by a CA nobody trusts
                async with plain.get(f"{url}/healthz") as answer:
                    await answer.read()

    run(volume, ca, scenario)


def test_certificate_is_reloaded_when_the_secret_changes(volume: SecretVolume, ca: trustme.CA) -> None:
    first, second, third = (pem(server_cert(ca)) for _ in range(3))
    volume.write(*first)

    async def serves(port: int, cert: bytes, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while (await asyncio.to_thread(served_certificate, port)).encode() != cert:
            assert time.monotonic() < deadline, "the new certificate was not served"
            await asyncio.sleep(0.05)

    async def main() -> None:
        injector = await start(settings(volume))
        try:
            await serves(injector.port, first[0])
            volume.write(second[0], first[1])  # a new certificate with the old key: not a pair
            await asyncio.sleep(0.3)
            assert (await asyncio.to_thread(served_certificate, injector.port)).encode() == first[0]
            volume.write(*third)
            await serves(injector.port, third[0])
            connector = aiohttp.TCPConnector(ssl=client_context(ca))
            async with aiohttp.ClientSession(connector=connector) as session, \
                    session.get(f"https://127.0.0.1:{injector.port}/healthz") as answer:
                assert answer.status == 200
        finally:
            await injector.stop()

    asyncio.run(main())


def test_start_refuses_a_bad_certificate(tmp_path: Path, volume: SecretVolume) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        asyncio.run(start(settings(volume, tls_cert=tmp_path / "bad.pem")))
    with pytest.raises(FileNotFoundError):
        asyncio.run(start(settings(volume, tls_key=tmp_path / "missing.pem")))


def test_python_m_sidecar_injector(volume: SecretVolume, ca: trustme.CA) -> None:
    """The command itself: starts, answers, and exits 0 on SIGTERM."""
    env = {**os.environ, "INJECTOR_SIDECAR_IMAGE": "sidecar:1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.injector", f"--tls-cert={volume.cert}", f"--tls-key={volume.key}",
         "--host=127.0.0.1", "--port=0", "--native-sidecars=off", "--log-format=json"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        line = json.loads(process.stderr.readline())
        assert line["message"].startswith("listening https=127.0.0.1:"), line
        port = int(line["message"].split()[1].rsplit(":", 1)[1])

        async def call() -> dict:
            connector = aiohttp.TCPConnector(ssl=client_context(ca))
            async with aiohttp.ClientSession(connector=connector) as session, \
                    session.post(f"https://127.0.0.1:{port}/mutate", json=review(golden("legacy-cluster"))) as answer:
                return await answer.json()

        patch = json.loads(base64.b64decode(asyncio.run(call())["response"]["patch"]))
        assert any(op["path"] == "/spec/containers/-" for op in patch), "--native-sidecars=off: a plain container"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
