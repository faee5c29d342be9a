"""The manifest of a registered version: every file with its size and SHA-256 digest.

The manifest is stored beside the files in the artifact store, and its own digest is kept as a
tag on the version in the registry's database: changing a byte of any file, adding or removing a
file, or rewriting the manifest itself is caught by `verify`, which a pull runs on every copy
before anything is served from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from inference_protocol.names import version_directory

from .errors import VerificationFailed

MANIFEST_NAME = "shadowserve-manifest.json"
FORMAT = "shadowserve.manifest/1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest from the artifact store is read whole: bounded
CHUNK = 1024 * 1024


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build(model: str, version_directory: str, files: Mapping[str, Path]) -> bytes:
    """The manifest of ``files`` (relative POSIX path -> file), as the bytes to store."""
    entries = {rel: {"sha256": file_digest(path), "size": path.stat().st_size} for rel, path in sorted(files.items())}
    document = {"format": FORMAT, "model": model, "version_directory": version_directory, "files": entries}
    return json.dumps(document, sort_keys=True, indent=1).encode() + b"\n"


def digest(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


def read(root: Path, expected_digest: str) -> dict[str, Any]:
    """The manifest in ``root``, checked against the digest the registry holds for it."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise VerificationFailed(f"{MANIFEST_NAME} is missing from the artifact store: the version was not "
                                 "registered by shadowserve-registry, or its files were removed", MANIFEST_NAME)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise VerificationFailed(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes", MANIFEST_NAME)
    data = path.read_bytes()
    if digest(data) != expected_digest:
        raise VerificationFailed(f"{MANIFEST_NAME} does not match the digest the registry holds for it: the "
                                 "artifact store was changed after registration", MANIFEST_NAME)
    try:
        document = json.loads(data)
    except ValueError:
        raise VerificationFailed(f"{MANIFEST_NAME} is not JSON", MANIFEST_NAME) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(
            document.get("files"), dict) or not isinstance(document.get("version_directory"), str) or \
            version_directory(document["version_directory"]) is None:
        raise VerificationFailed(f"{MANIFEST_NAME} is not a {FORMAT} manifest", MANIFEST_NAME)
    return document


def _files_under(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*"):
        if path.is_symlink():
            raise VerificationFailed(f"{path.relative_to(root).as_posix()} is a symbolic link; a downloaded "
                                     "version holds plain files only", path.relative_to(root).as_posix())
        if path.is_file():
            found[path.relative_to(root).as_posix()] = path
    found.pop(MANIFEST_NAME, None)
    return found


def verify(root: Path, expected_digest: str) -> dict[str, Any]:
    """Check every file under ``root`` against its manifest; the manifest, or `VerificationFailed`.

    The file set must be exactly the manifest's: a missing file, an extra file, a different
    size or a different digest each fail, naming the file.
    """
    document = read(root, expected_digest)
    listed: dict[str, Any] = document["files"]
    present = _files_under(root)
    for rel in sorted(set(listed) | set(present)):
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise VerificationFailed(f"the manifest names {rel!r}, a path outside the model directory", rel)
        entry = listed.get(rel)
        if rel not in present:
            raise VerificationFailed(f"{rel} is in the manifest but missing from the artifact store", rel)
        if not isinstance(entry, dict):
            raise VerificationFailed(f"{rel} is in the artifact store but not in the manifest", rel)
        path = present[rel]
        if path.stat().st_size != entry.get("size") or file_digest(path) != entry.get("sha256"):
            raise VerificationFailed(f"{rel} does not match its digest in the manifest: the file was changed "
                                     "after registration", rel)
    return document
