"""Object stores to test against: a real S3 API (moto's server) on a free port, and a misbehaving double.

`MotoS3` is moto's own threaded server, the S3 API over HTTP on 127.0.0.1, driven by boto3:
tests upload a model repository with `put_tree` and change it with `put`/`delete_prefix`.
`BadStore` accepts connections and then hangs, answers garbage, or lists one size and sends
another: what the storage code must survive, bounded in time and bytes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

KEY_ID, SECRET = "testing-key-id", "testing-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """moto's S3 server on a free port, with a client to fill its buckets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client: Any = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """Triton's form for a private S3 instance: s3://host:port/bucket/path."""
        return f"s3://127.0.0.1:{self.port}/{bucket}" + (f"/{prefix}" if prefix else "")

    def put(self, bucket: str, key: str, body: bytes | str) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)

    def put_tree(self, bucket: str, prefix: str, directory: Path) -> None:
        """Upload every file under ``directory`` to ``prefix/`` (a model repository, or one model)."""
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                self.put(bucket, f"{prefix}/{path.relative_to(directory).as_posix()}".lstrip("/"), path.read_bytes())

    def keys(self, bucket: str) -> list[str]:
        return [item["Key"] for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        for key in self.keys(bucket):
            if key.startswith(prefix):
                self.client.delete_object(Bucket=bucket, Key=key)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment, as a pod's secret gives them; nothing from ~/.aws or a metadata server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>models</Name><Prefix></Prefix>
<KeyCount>{count}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"""
ENTRY = ("<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"{key}\"</ETag>"
         "<Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")


class BadStore:
    """An HTTP listener posing as S3 that misbehaves as ``mode`` says.

    * ``hang``: accepts, reads nothing, answers nothing, keeps the connection open;
    * ``garbage``: answers every request 200 with a body that is not S3's XML;
    * ``listing``: answers a listing with ``keys`` (name → listed size), or with ``listing``
      (a whole body) when set, and every object read with ``body`` (whatever its listed size),
      or never when ``body`` is None.
    """

    def __init__(self, mode: str, keys: dict[str, int] | None = None, body: bytes | None = b"") -> None:
        self.mode, self.keys, self.body = mode, keys or {}, body
        self.listing: bytes | None = None  # when set, the listing's whole body, as it is
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, bucket: str = "models") -> str:
        return f"s3://127.0.0.1:{self.port}/{bucket}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            if self.mode == "hang":
                self.held.append(conn)
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = conn.recv(65536).decode("latin-1")
            line = request.split("\r\n", 1)[0]
            if self.mode == "garbage":
                body = b"\x00\xffnot xml at all <<<"
            elif "list-type=2" in line and self.listing is not None:
                body = self.listing
            elif "list-type=2" in line:
                entries = "".join(ENTRY.format(key=key, size=size) for key, size in self.keys.items())
                body = LISTING.format(count=len(self.keys), contents=entries).encode()
            elif self.body is None:  # the listing answers, the files never do
                self.stopped.wait()  # held open, unanswered, until the double closes
                return
            else:
                body = self.body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.held:
            conn.close()
