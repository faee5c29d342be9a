"""One object store, through fsspec (s3fs, gcsfs, adlfs): listed and read with every call bounded.

Each call runs as a coroutine on fsspec's own I/O loop (its thread, so a file being written
never holds the server's loop) and is awaited from the caller's loop under a deadline: a
store that accepts a connection and never answers costs ``timeout_s``, not a hung poll, and
the call is cancelled on the store's side as well. A listing stops at the count it was
allowed (S3 pages are read one at a time); a download reads the size it was listed with and
not one byte more, and fails when the store sends a different length.

Credentials follow Triton: the standard chains of each SDK (AWS_* variables and
~/.aws for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS), AZURE_STORAGE_ACCOUNT and
AZURE_STORAGE_KEY for Azure, or the file TRITON_CLOUD_CREDENTIAL_PATH names, whose entry
with the longest name matching the URL wins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, Unavailable
from .storage_urls import StoreUrl

T = TypeVar("T")
CHUNK = 4 * 1024 * 1024
MIN_RATE = 1024 * 1024  # bytes a second a download may not fall below, on top of the timeout
PAGE = 1000  # keys a listing page holds (S3's most)
MAX_CREDENTIAL_FILE = 1024 * 1024
SETUP_SECS = 60.0  # building a client reads the SDK's service description: seconds on a busy machine
_EXTRA = {"s3": ("s3fs", "s3"), "gcs": ("gcsfs", "gcs"), "abfs": ("adlfs", "azure")}


class StoreError(Unavailable):
    """The object store could not be listed or read: down, slow, refusing the credentials, or answering garbage."""


@dataclasses.dataclass(frozen=True)
class Remote:
    """One file of the remote repository."""

    key: str  # relative to the repository, '/' between components
    size: int
    tag: str  # what changes when the content does: the ETag, a generation, or the modification time


def storage_options(url: StoreUrl, environ: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
    """The keyword arguments of the fsspec filesystem for ``url``: endpoint, credentials, timeouts."""
    entry = _credential_entry(url, environ)
    if url.protocol == "s3":
        options: dict[str, Any] = {
            "config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s,
                              "retries": {"max_attempts": 2, "mode": "standard"}},
            "skip_instance_cache": True, "use_listings_cache": False,
        }
        if url.endpoint:
            options["endpoint_url"] = url.endpoint
        if isinstance(entry, dict):
            for ours, theirs in (("key", "key_id"), ("secret", "secret_key"), ("token", "session_token"),
                                 ("profile", "profile")):
                if entry.get(theirs):
                    options[ours] = str(entry[theirs])
            if entry.get("region"):
                options["client_kwargs"] = {"region_name": str(entry["region"])}
        return options
    if url.protocol == "gcs":
        options = {"skip_instance_cache": True, "use_listings_cache": False, "requests_timeout": timeout_s}
        token = entry if isinstance(entry, str) and entry else None
        if token:
            options["token"] = token  # else gcsfs's chain: GOOGLE_APPLICATION_CREDENTIALS, the metadata server
        return options
    fields = entry if isinstance(entry, dict) else {}
    account = url.account or str(fields.get("account_str") or "") or environ.get("AZURE_STORAGE_ACCOUNT", "")
    if not account:
        raise ConfigError(f"{url}: az:// needs the storage account: set AZURE_STORAGE_ACCOUNT, or write "
                          "as://account/container/path")
    # adlfs's own timeouts differ by release; the deadline of each call bounds it all the same
    options = {"account_name": account, "skip_instance_cache": True, "use_listings_cache": False}
    auth = str(fields.get("auth_type") or environ.get("AZURE_STORAGE_AUTH_TYPE", ""))
    key = str(fields.get("account_key") or "") or environ.get("AZURE_STORAGE_KEY", "")
    if key and auth not in ("managed_identity", "default"):
        options["account_key"] = key
    else:
        options["anon"] = False  # adlfs's DefaultAzureCredential: managed identity, the CLI, ...
    return options


def _credential_entry(url: StoreUrl, environ: Mapping[str, str]) -> Any:
    """The entry of TRITON_CLOUD_CREDENTIAL_PATH for this URL (the longest matching name), or None."""
    path = environ.get("TRITON_CLOUD_CREDENTIAL_PATH", "")
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CREDENTIAL_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"TRITON_CLOUD_CREDENTIAL_PATH {path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_CREDENTIAL_FILE:
        raise ConfigError(f"TRITON_CLOUD_CREDENTIAL_PATH {path} is larger than {MAX_CREDENTIAL_FILE} bytes")
    try:
        document = json.loads(raw)
    except ValueError:  # the text is not shown: it holds secrets
        raise ConfigError(f"TRITON_CLOUD_CREDENTIAL_PATH {path} is not JSON; write Triton's credential file "
                          "format") from None
    section = document.get({"s3": "s3", "gs": "gs"}.get(url.scheme, "as")) if isinstance(document, dict) else None
    if not isinstance(section, dict):
        return None
    names = [name for name in section if isinstance(name, str) and (name == "" or url.matches(name))]
    return section[max(names, key=len)] if names else None


class Store:
    """A remote repository's files: `list` and `download`, each bounded in time (and bytes or count)."""

    def __init__(self, url: StoreUrl, environ: Mapping[str, str], timeout_s: float, fs: Any = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.fs = fs if fs is not None else _open(url, environ, timeout_s)

    async def connect(self) -> None:
        """Build the SDK's client: local work (botocore reads its service model), outside the calls' deadlines."""
        if self.url.protocol == "s3":
            await self._call(self.fs.set_session(), max(self.timeout_s, SETUP_SECS), "setting up its client")

    async def _call(self, work: Awaitable[T], timeout_s: float, what: str) -> T:
        """Run ``work`` on fsspec's loop; StoreError when it fails or takes longer than ``timeout_s``."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            work, self.fs.loop)  # type: ignore[arg-type]  # every caller passes a coroutine
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            raise StoreError(f"{self.url}: {what}: no answer within {timeout_s:g}s; is the store up (and the "
                             "endpoint right)? --model-repository-timeout-secs sets the limit") from None
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, parsers: each a failing store, said in one line
            raise StoreError(f"{self.url}: {what}: {_described(exc)}") from None

    async def listing(self, limit: int, under: str = "") -> list[Remote]:
        """Every file of the repository (or of its folder ``under``), at most ``limit``; StoreError past it."""
        root = f"{self.url.root}/{under}".rstrip("/")
        found: list[Remote] = []
        if self.url.protocol == "s3":
            found = await self._list_s3(root, limit)
        else:  # gcsfs and adlfs list in one call; its time is bounded, its count checked after
            listing = await self._call(self.fs._find(root, detail=True), self.timeout_s * (1 + limit // PAGE),
                                       "listing the repository")
            for info in listing.values():
                remote = self._remote(info)
                if remote is not None:
                    found.append(remote)
        if len(found) > limit:
            raise StoreError(f"{self.url} holds more than {limit} files; serve fewer, or raise "
                             "--model-repository-max-files")
        return found

    async def _list_s3(self, root: str, limit: int) -> list[Remote]:
        """S3's listing page by page, each page within the timeout, stopping once past ``limit``."""
        bucket, _, key = root.partition("/")
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key}/" if key else "", "MaxKeys": PAGE}
        found: list[Remote] = []
        for _page in range(1 + limit // PAGE + 1):
            page = await self._call(self.fs._call_s3("list_objects_v2", **request), self.timeout_s,
                                    "listing the repository")
            if not isinstance(page, dict) or not isinstance(page.get("Contents", []), list):
                raise StoreError(f"{self.url}: the listing is not an S3 ListObjectsV2 answer")
            for item in page.get("Contents", []):
                if not isinstance(item, dict) or not isinstance(item.get("Key"), str):
                    raise StoreError(f"{self.url}: the listing holds an entry without a key")
                info = {"name": f"{bucket}/{item['Key']}", "size": item.get("Size"), "ETag": item.get("ETag"),
                        "LastModified": item.get("LastModified")}
                remote = self._remote(info)
                if remote is not None:
                    found.append(remote)
            token = page.get("NextContinuationToken")
            if len(found) > limit or not page.get("IsTruncated"):
                return found
            if not isinstance(token, str) or not token:
                raise StoreError(f"{self.url}: the listing is cut short without a continuation token")
            request["ContinuationToken"] = token
        return found

    def _remote(self, info: Mapping[str, Any]) -> Remote | None:
        """A listed entry as a `Remote`; None for folders and folder placeholders."""
        name = str(info.get("name", ""))
        if info.get("type") == "directory" or name.endswith("/") or not name.startswith(self.url.root + "/"):
            return None  # nothing outside the repository is ever asked for
        size = info.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(f"{self.url}: the listing gives {name[:200]!r} no valid size")
        return Remote(name[len(self.url.root) + 1:], size, _tag(info))

    async def download(self, remote: Remote, dest: Path) -> None:
        """Write ``remote`` to the new file ``dest``; StoreError when the store sends another length or stalls."""
        timeout = self.timeout_s + remote.size / MIN_RATE
        await self._call(self._download(remote, dest), timeout, f"reading {remote.key}")

    async def _download(self, remote: Remote, dest: Path) -> None:
        path = f"{self.url.root}/{remote.key}"
        # O_EXCL and O_NOFOLLOW: the file is new, in a directory made for this fetch; never a link
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            written = 0
            if self.url.protocol == "s3":
                stream = await self.fs.open_async(path, "rb")
                try:
                    while True:  # one byte more than is left: a store sending too much is caught, not read on
                        chunk = await asyncio.wait_for(stream.read(min(CHUNK, remote.size - written + 1)),
                                                       self.timeout_s)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > remote.size:
                            raise StoreError(f"{self.url}: {remote.key} sends more than the {remote.size} bytes "
                                             "listed (it changed while being fetched?); fetched again at the next poll")
                        out.write(chunk)
                finally:
                    if stream.r is not None:
                        stream.r.close()  # the connection goes back, or is dropped, at once
            else:
                while written < remote.size:
                    end = min(written + CHUNK, remote.size)
                    chunk = await asyncio.wait_for(self.fs._cat_file(path, start=written, end=end), self.timeout_s)
                    if len(chunk) != end - written:
                        break
                    out.write(chunk)
                    written = end
            if written != remote.size:
                raise StoreError(f"{self.url}: {remote.key} sent {written} bytes, not the {remote.size} listed (it "
                                 "changed while being fetched?); fetched again at the next poll")


def _tag(info: Mapping[str, Any]) -> str:
    for field in ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified", "mtime", "updated"):
        if info.get(field) not in (None, ""):
            return str(info[field]).strip('"')
    return ""


def _described(exc: BaseException) -> str:
    """What went wrong, in one line, for a person fixing the setup."""
    if isinstance(exc, PermissionError):
        return "access denied; check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, " \
               "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_KEY or TRITON_CLOUD_CREDENTIAL_PATH)"
    if isinstance(exc, FileNotFoundError):
        return "no such bucket (or container); check the URL"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "no answer in time; is the store up?"
    if isinstance(exc, OSError) and exc.strerror:  # s3fs's translation of an S3 error code
        return f"the store answered: {exc.strerror}"
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open(url: StoreUrl, environ: Mapping[str, str], timeout_s: float) -> Any:
    """The fsspec filesystem for ``url``; ConfigError naming the extra to install when it is missing."""
    import fsspec

    package, extra = _EXTRA[url.protocol]
    try:
        cls = fsspec.get_filesystem_class(url.protocol)
    except ImportError:
        raise ConfigError(f"--model-repository {url} needs {package}: pip install 'shadowserve[{extra}]'") from None
    try:
        fs = cls(**storage_options(url, environ, timeout_s))
    except (TypeError, ValueError) as exc:  # a release of the library that takes other options
        raise ConfigError(f"--model-repository {url}: {package} refuses its options ({exc}); install the release "
                          f"of shadowserve[{extra}]") from None
    if url.protocol == "s3":
        fs.retries = 2  # s3fs's own retries, on top of botocore's: the deadline of each call bounds both
    return fs
