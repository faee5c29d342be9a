"""Model repositories on object storage: the URLs, as Triton writes them, and the keys under them.

Pure parsing, no filesystem imported: `serving.settings` reads ``--model-repository`` with
`repository_location`, which keeps a plain path a `Path` and makes a URL a `StoreUrl`::

    >>> parse_store_url("s3://https://minio.local:9000/models/triton")
    StoreUrl(scheme='s3', bucket='models', prefix='triton', endpoint='https://minio.local:9000', account='')

The forms are Triton's (``s3://bucket/path``; ``s3://host:port/bucket/path`` and
``s3://https://host:port/bucket/path`` for S3-compatible servers, over HTTP unless
``https://`` is given; ``gs://bucket/path``; ``as://account/container/path``), and fsspec's
``az://container/path`` with the account from ``AZURE_STORAGE_ACCOUNT``. A key listed by the
store becomes a path in the local cache: `key_problem` refuses what would land outside it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath

SCHEMES = ("s3", "gs", "as", "az")
MAX_URL_LENGTH = 2048
MAX_KEY_LENGTH = 1024  # S3's own limit on a key, in UTF-8 bytes
MAX_COMPONENT_BYTES = 255  # NAME_MAX: each component becomes a file or directory name
_URL = re.compile(r"(?P<scheme>[a-z0-9]+)://(?P<rest>.*)", re.DOTALL)
# Triton's private-instance form: an optional http(s):// then host:port, then the bucket
_ENDPOINT = re.compile(r"(?:(?P<proto>https?)://)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})/")
_BUCKET = {
    # legacy S3 buckets may hold capitals and underscores; ':' and '/' never
    "s3": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]"),
    "gs": re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"),
    "as": re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root"),  # the container
    "az": re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root"),
}
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_FORMS = {
    "s3": "s3://bucket/path, s3://host:port/bucket/path or s3://https://host:port/bucket/path",
    "gs": "gs://bucket/path",
    "as": "as://account/container/path",
    "az": "az://container/path (the account from AZURE_STORAGE_ACCOUNT)",
}


@dataclasses.dataclass(frozen=True)
class StoreUrl:
    """Where a remote model repository is: the store, its bucket (or container) and the path in it."""

    scheme: str  # one of SCHEMES, as written
    bucket: str  # the S3 or GCS bucket, the Azure container
    prefix: str = ""  # the repository's path in the bucket, without leading or trailing '/'
    endpoint: str = ""  # S3-compatible servers: http(s)://host:port; "" for AWS itself
    account: str = ""  # as://: the Azure storage account

    def __str__(self) -> str:
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        if self.scheme == "s3" and self.endpoint:
            endpoint = self.endpoint[len("http://"):] if self.endpoint.startswith("http://") else self.endpoint
            return f"s3://{endpoint}/{path}"
        if self.scheme == "as":
            return f"as://{self.account}/{path}"
        return f"{self.scheme}://{path}"

    @property
    def protocol(self) -> str:
        """fsspec's name for the store: s3 (s3fs), gcs (gcsfs), abfs (adlfs)."""
        return {"s3": "s3", "gs": "gcs", "as": "abfs", "az": "abfs"}[self.scheme]

    @property
    def root(self) -> str:
        """The repository as fsspec names it: ``bucket/prefix``."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def matches(self, name: str) -> bool:
        """Whether a credential file's entry (``s3://bucket``, ``as://account/container``) names this repository."""
        here = str(self)
        return here == name or here.startswith(name.rstrip("/") + "/")


def is_store_url(text: str) -> bool:
    """Whether ``text`` is written as a URL (``scheme://...``) rather than a local path."""
    return _URL.fullmatch(text.strip()) is not None


def repository_location(text: str) -> Path | StoreUrl:
    """``--model-repository``: a directory, or an object-store URL; ValueError saying the forms."""
    if not is_store_url(text):
        return Path(text)
    return parse_store_url(text)


def parse_store_url(text: str) -> StoreUrl:
    """A `StoreUrl` from Triton's forms; ValueError with a one-line message naming the right form."""
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"the model repository URL is {len(text)} characters long; at most {MAX_URL_LENGTH}")
    match = _URL.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{_shown(text)} is not a URL: write {', '.join(f'{s}://' for s in SCHEMES)} before it")
    scheme, rest = match["scheme"], match["rest"]
    if scheme not in SCHEMES:
        raise ValueError(f"{scheme}:// is not a supported model repository: use a directory or one of "
                         f"{', '.join(_FORMS.values())}")
    form = _FORMS[scheme]
    if any(ord(c) < 32 or ord(c) == 127 for c in rest) or "\\" in rest or "?" in rest or "#" in rest:
        raise ValueError(f"{_shown(text)} holds a control character, a backslash, '?' or '#'; write {form}")
    endpoint = account = ""
    if scheme == "s3":
        found = _ENDPOINT.match(rest)
        if found is not None:
            port = int(found["port"])
            if not 0 < port < 65536:
                raise ValueError(f"{_shown(text)}: port {port} is not a TCP port; write {form}")
            endpoint = f"{found['proto'] or 'http'}://{found['host']}:{port}"
            rest = rest[found.end():]
        elif rest.startswith(("http://", "https://")):
            raise ValueError(f"{_shown(text)}: an S3 endpoint needs host:port; write {form}")
    if scheme == "as":
        account, _, rest = rest.partition("/")
        if not _ACCOUNT.fullmatch(account):
            raise ValueError(f"{_shown(text)}: {account!r} is not an Azure storage account name (3 to 24 lowercase "
                             f"letters and digits); write {form}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET[scheme].fullmatch(bucket):
        what = "container" if scheme in ("as", "az") else "bucket"
        raise ValueError(f"{_shown(text)}: {_shown(bucket) or 'nothing'} is not a {what} name; write {form}")
    prefix = prefix.rstrip("/")
    if prefix:
        problem = key_problem(prefix)
        if problem:
            raise ValueError(f"{_shown(text)}: the path in the bucket cannot be used: {problem}")
    return StoreUrl(scheme, bucket, prefix, endpoint, account)


def key_problem(key: str) -> str | None:
    """Why a key (relative to the repository) cannot become a path in the cache; None when it can.

    Refused: empty or absolute keys, empty components (``a//b``, which a filesystem would fold
    into another key), ``.`` and ``..``, backslashes and control characters, and names longer
    than a filesystem takes. Checked before anything touches the disk.
    """
    if not key:
        return "it is empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} bytes"
    if key.startswith("/"):
        return "it is an absolute path"
    if "\\" in key:
        return "it holds a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "it holds a control character"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        return "it is not valid UTF-8"
    parts = key.split("/")
    if any(part in (".", "..") for part in parts):
        return "it holds '.' or '..'; keys must stay inside the repository"
    if any(not part for part in parts):
        return "it holds an empty path component ('//')"
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in parts):
        return f"a path component is longer than {MAX_COMPONENT_BYTES} bytes"
    if PurePosixPath(key).is_absolute():  # pragma: no cover - the '/' check above already refuses it
        return "it is an absolute path"
    return None


def _shown(text: str) -> str:
    """A value for a message: control characters escaped, cut to a readable length."""
    return ascii(text[:200])[1:-1] if not text.isprintable() else text[:200]
