"""Model names and version directories: what a model may be called, as Triton reads them.

A model name is one directory of a model repository, and so also what the registry may call a
model that a repository will hold; version directories are positive integers.
"""

from __future__ import annotations

MAX_NAME_LENGTH = 255  # NAME_MAX: a model name is a directory name
MAX_VERSION_DIGITS = 19  # int64, as Triton parses versions


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name, or None when it can."""
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
    if name in (".", ".."):
        return "'.' and '..' are not directories of the repository"
    if "/" in name or "\\" in name:
        return "it holds a path separator; a model name is one directory of the repository"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "it is not valid UTF-8"
    if name.startswith("."):
        return "names starting with '.' are hidden directories, which the repository skips"
    return None


def version_directory(name: str) -> int | None:
    """The version a directory holds, as Triton reads them: positive, no leading zero; else None."""
    if not name.isascii() or not name.isdigit() or name.startswith("0") or len(name) > MAX_VERSION_DIGITS:
        return None
    return int(name)
