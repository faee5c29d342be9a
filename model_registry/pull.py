"""From the registry to a model repository on disk, every file verified before it is used.

`fetch` brings one version into a cache and verifies it against its manifest; `install` writes a
model directory of a Triton repository from fetched versions; `pull` does both for a list of
URIs (``shadowserve-registry pull``, an init container, an image build). Every step fails
closed: nothing half-downloaded or unverified is ever installed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import layout, manifest
from .errors import RegistryError, VerificationFailed
from .store import Registry, Version
from .uris import ModelUri, parse_model_uri

PULLED = ".shadowserve-pull.json"  # what a pull installed; hidden, so a repository scan skips it


def cached_path(cache: Path, version: Version) -> Path:
    return cache / version.name / f"{version.version}-{version.manifest_digest[:12]}"


def fetch(registry: Registry, version: Version, cache: Path) -> Path:
    """A verified copy of ``version`` in ``cache``: downloaded when absent, re-verified when present."""
    if not version.manifest_digest:
        raise VerificationFailed(f"{version.uri} has no manifest digest: it was not registered with "
                                 "shadowserve-registry register, so its files cannot be verified", "")
    target = cached_path(cache, version)
    if target.is_dir():
        try:
            manifest.verify(target, version.manifest_digest)
            return target
        except VerificationFailed:
            shutil.rmtree(target)  # a damaged cache entry: download it again
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        _check_manifest_first(registry, version, partial)
        root = registry.download(version, partial / "files")
        try:
            manifest.verify(root, version.manifest_digest)
        except VerificationFailed as exc:
            raise VerificationFailed(f"{version.uri}: {exc}", exc.path) from None
        try:
            root.rename(target)
        except OSError:
            if not target.is_dir():  # else another fetch of the same version won the race: keep theirs
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _check_manifest_first(registry: Registry, version: Version, scratch: Path) -> None:
    """The manifest alone, checked against the registry's digest, before any model file is downloaded.

    A rewritten manifest fails at once, not after gigabytes; and a version whose files would not
    fit on this disk is refused with the sizes, instead of filling it.
    """
    (scratch / "manifest").mkdir()
    copy = registry.download(version, scratch / "manifest", manifest.MANIFEST_NAME)
    try:
        document = manifest.read(copy.parent, version.manifest_digest)
    except VerificationFailed as exc:
        raise VerificationFailed(f"{version.uri}: {exc}", exc.path) from None
    sizes = [entry.get("size") for entry in document["files"].values() if isinstance(entry, dict)]
    needed = sum(size for size in sizes if isinstance(size, int) and size > 0)
    free = shutil.disk_usage(scratch).free
    if needed > free:
        raise RegistryError(f"{version.uri} needs {needed:,} bytes and {scratch.parent} has {free:,} free: "
                            "free space or choose another cache directory")


def _place(source: Path, target: Path) -> None:
    """A hard link when the cache is on the same filesystem, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def install(dest: Path, name: str, versions: Sequence[tuple[Version, Path]], serve: Sequence[int]) -> Path:
    """Write ``dest/name`` from fetched versions, serving the versions in ``serve``.

    Each version's directory is named after its registry version number; the model-level files
    (config.pbtxt, labels, warmup/) are those of the newest served version, with config.pbtxt's
    ``version_policy`` set to ``specific`` ``serve``. The directory is built beside the old one
    and swapped in by two renames: a reader sees the old directory or the new one, never part of
    either (a scanner running between the renames sees none, which is why the one poller both
    installs and scans).
    """
    by_number = {version.version: (version, path) for version, path in versions}
    if not serve or any(number not in by_number for number in serve):
        raise RegistryError(f"cannot install {name}: serve {list(serve)} must be among the fetched versions "
                            f"{sorted(by_number)}")
    dest.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".install-{name}-", dir=dest))
    try:
        documents = {number: manifest.read(path, version.manifest_digest)
                     for number, (version, path) in by_number.items()}
        for number, (_, path) in by_number.items():
            directory = documents[number]["version_directory"]
            for file in (path / directory).rglob("*"):
                if file.is_file():
                    _place(file, staged / str(number) / file.relative_to(path / directory))
        newest = by_number[max(serve)][1]
        model_level = documents[max(serve)]
        for rel in model_level["files"]:
            if not rel.startswith(f"{model_level['version_directory']}/") and rel != layout.CONFIG:
                _place(newest / rel, staged / rel)
        (staged / layout.CONFIG).write_text(layout.serving_config(newest, serve))
        final = dest / name
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=dest))
            final.rename(old / name)
        staged.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def pull(registry: Registry, uris: Sequence[str | ModelUri], dest: Path, cache: Path | None = None) -> list[Version]:
    """Resolve, fetch, verify and install every URI into the repository ``dest``; fails closed.

    Several URIs may name versions of one model when their config.pbtxt files are identical
    (a model directory has one config); its directory then serves all of them.
    """
    targets = [parse_model_uri(uri) if isinstance(uri, str) else uri for uri in uris]
    if not targets:
        raise RegistryError("name at least one model URI: models:/NAME@ALIAS or models:/NAME/VERSION")
    resolved = [(target, registry.resolve(target)) for target in targets]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cache-", dir=dest) as scratch:
        where = cache if cache is not None else Path(scratch)
        fetched: dict[str, dict[int, tuple[Version, Path]]] = {}
        for _, version in resolved:
            fetched.setdefault(version.name, {})[version.version] = (version, fetch(registry, version, where))
        for name, versions in fetched.items():
            configs = {number: (path / layout.CONFIG).read_bytes() for number, (_, path) in versions.items()}
            if len(set(configs.values())) > 1:
                listed = " and ".join(f"models:/{name}/{n}" for n in sorted(configs))
                raise RegistryError(f"{listed} have different config.pbtxt files; a model directory has one config: "
                                    "pull them into separate repositories")
            install(dest, name, list(versions.values()), sorted(versions))
    summary = [{"uri": str(target), "name": v.name, "version": v.version, "manifest_sha256": v.manifest_digest}
               for target, v in resolved]
    (dest / PULLED).write_text(json.dumps(summary, indent=1) + "\n")
    return [version for _, version in resolved]
