"""The local copy of a remote repository on disk: its model directories, their links, and its record.

::

    <base>/state.json                  what each copy holds: key → (size, tag), and its directory
    <base>/repository/<model>          a symlink to .fetched/<id>, switched in one rename
    <base>/repository/.fetched/<id>/   a model directory, built whole before it is linked

A record is trusted only as far as the disk agrees with it (`is_whole`): a copy with a file
missing, of another size, or not a regular file is fetched again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from inference_protocol.names import name_problem

from .storage_urls import key_problem

STATE = "state.json"
Files = dict[str, tuple[int, str]]  # key inside the model → (size, tag)


@dataclasses.dataclass
class Copy:
    """A model's local copy: its directory under ``.fetched`` and the files it holds."""

    directory: str
    files: Files


def recorded(base: Path, url: str) -> dict[str, Copy]:
    """The copies the record of ``base`` lists for ``url``; none when there is no record this code wrote."""
    try:
        document = json.loads((base / STATE).read_text())
        if document.get("url") != url:
            return {}
        return {name: Copy(str(entry["directory"]), {key: (int(size), str(tag))
                                                     for key, (size, tag) in entry["files"].items()})
                for name, entry in document["models"].items()
                if name_problem(name) is None and _plain(str(entry["directory"]))
                and not any(key_problem(key) for key in entry["files"])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # everything is fetched again


def record(base: Path, url: str, copies: Mapping[str, Copy]) -> None:
    """Write the record of ``copies``, replacing the previous one in one rename."""
    document = {"url": url, "models": {name: {"directory": copy.directory, "files": copy.files}
                                       for name, copy in copies.items()}}
    temporary = base / f".{STATE}.tmp"
    temporary.write_text(json.dumps(document))
    os.replace(temporary, base / STATE)


def is_whole(fetched: Path, copy: Copy) -> bool:
    """Every recorded file is there, a regular file of its size."""
    directory = fetched / copy.directory
    for key, (size, _) in copy.files.items():
        try:
            info = os.lstat(directory / key)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
    return directory.is_dir() and not directory.is_symlink()


def reusable(fetched: Path, copy: Copy | None, key: str, size: int, tag: str) -> Path | None:
    """The file of ``copy`` that holds what the store lists as ``(size, tag)``, when there is one."""
    if copy is None or copy.files.get(key) != (size, tag):
        return None
    path = fetched / copy.directory / key
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISREG(info.st_mode) and info.st_size == size else None


def link(root: Path, fetched: Path, name: str, directory: str) -> None:
    """Point ``root/name`` at ``fetched/directory``; os.replace of a symlink is atomic: a scan sees one or the other."""
    temporary = root / f".link-{directory}"
    temporary.unlink(missing_ok=True)
    os.symlink(f"{fetched.name}/{directory}", temporary)
    os.replace(temporary, root / name)


def remove(path: Path) -> None:
    """A directory with what it holds, or a file or a link (never what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and not name.startswith(".")
