"""Model names, version numbers and the files a config names: what may reach the filesystem.

A model name comes from a client (the repository API) or a directory name; a file name
comes from a config, which a client may send as a load override. Neither may leave the
model's directory: names follow Triton's rules (one path component, no ``..``), and a
file a config names must resolve, symlinks followed, inside the directory it belongs to.
Messages name paths relative to the repository, never the host's absolute paths.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path, PurePosixPath
from typing import IO

from inference_protocol.names import MAX_NAME_LENGTH, MAX_VERSION_DIGITS, name_problem
from inference_protocol.names import version_directory as version_directory  # serving reads it from here

from .errors import ConfigError

MAX_LABEL_BYTES = 4 * 1024 * 1024  # a labels file is read whole at load, one class name a line
MAX_LABEL_LENGTH = 1024


def shown(name: str) -> str:
    """A name as messages and JSON may carry it: control characters and undecodable bytes escaped."""
    if name_problem(name) is None:
        return name
    return ascii(name[:MAX_NAME_LENGTH])[1:-1]


def request_version(text: str) -> int | None:
    """A version number from a request (ASCII digits, positive, int64), or None when it is not one."""
    if not text.isascii() or not text.isdigit() or len(text) > MAX_VERSION_DIGITS:
        return None
    number = int(text)
    return number if 0 < number < 2**63 else None


def relative_file_problem(value: str) -> str | None:
    """Why a file name from a config cannot be used, before any filesystem access; None when it can."""
    if not value:
        return "it is empty"
    if "\x00" in value or any(ord(c) < 32 for c in value):
        return "it holds a control character"
    if "\\" in value:
        return "it holds a backslash; use '/' between directories"
    path = PurePosixPath(value)
    if path.is_absolute():
        return "it is an absolute path; give a path relative to the model's directory"
    if ".." in path.parts:
        return "it holds '..'; files must stay inside the model's directory"
    return None


def check_filename(value: str, what: str) -> None:
    """A file name from a config: relative and without '..', checked before anything touches the disk."""
    problem = relative_file_problem(value)
    if problem:
        # an absolute value is not echoed: messages carry no host paths, not even the client's
        named = "" if value.startswith("/") else f" {value[:200]!r}"
        raise ConfigError(f"{what}{named} cannot be used: {problem}")


def confined(base: Path, relative: str, what: str, label: str) -> Path:
    """``base / relative``, symlinks resolved, when it stays inside ``base`` (itself resolved).

    ``label`` is how messages show the file (relative to the repository); raises
    `ConfigError` for a file outside ``base``.
    """
    check_filename(relative, what)
    root = Path(os.path.realpath(base))
    target = Path(os.path.realpath(base / relative))
    if target != root and root not in target.parents:
        raise ConfigError(f"{what} {label} resolves outside its directory (a symlink leaving it); files a "
                          "config names must stay inside the model's directory")
    return target


def read_labels(model_dir: Path, filename: str, what: str) -> tuple[str, ...]:
    """The class names of a ``label_filename``: a file inside the model's directory, one name a line."""
    label = f"{model_dir.name}/{filename}"
    path = confined(model_dir, filename, what, label)
    try:
        if not path.is_file():
            raise ConfigError(f"{what} {label} is missing (or not a regular file); put it beside config.pbtxt")
        with path.open("rb") as file:
            raw = file.read(MAX_LABEL_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {label} ({exc.strerror or 'unreadable'})") from None
    if len(raw) > MAX_LABEL_BYTES:
        raise ConfigError(f"{what} {label} is larger than {MAX_LABEL_BYTES} bytes; give one class name a line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {label} is not UTF-8 text; give one class name a line") from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    long = next((i for i, name in enumerate(labels) if len(name) > MAX_LABEL_LENGTH), None)
    if long is not None:  # each becomes a Prometheus label value on every scrape
        raise ConfigError(f"{what} {label}: class name #{long + 1} is longer than {MAX_LABEL_LENGTH} characters")
    return labels


def scrub(message: str, root: Path) -> str:
    """A message without the repository's absolute path: paths in it become relative to the repository."""
    for prefix in {str(root), os.path.realpath(root), str(root.absolute())}:
        if prefix and prefix != "/":
            message = message.replace(prefix.rstrip("/") + "/", "").replace(prefix, "<repository>")
    return message


def hold_lock(path: Path, busy: str) -> IO[bytes]:
    """An exclusive lock on ``path`` (made if missing), held until the file returned is closed.

    Raises `ConfigError` with ``busy`` when another process holds it: one serve process per cache.
    """
    lock = path.open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigError(busy) from None
    return lock
