"""Test certificates (trustme) laid out as the kubelet mounts a Secret, and HTTPS helpers."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trustme


class SecretVolume:
    """A directory like a mounted Secret: ``tls.crt`` → ``..data/tls.crt``, ``..data`` → a timestamped dir.

    `write` replaces the contents the way the kubelet does, by swapping the ``..data`` symlink.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = 0
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (directory / name).symlink_to(f"..data/{name}")

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    def write(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.generation += 1
        version = self.directory / f"..{self.generation}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert_pem)
        (version / "tls.key").write_bytes(key_pem)
        link = self.directory / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.directory / "..data")


def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost", "shadowserve-injector.shadowserve-system.svc")


def pem(leaf: trustme.LeafCert) -> tuple[bytes, bytes]:
    """The certificate chain and the key, as PEM."""
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def served_certificate(port: int) -> str:
    """The PEM certificate the server at 127.0.0.1:port presents to a new connection."""
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
