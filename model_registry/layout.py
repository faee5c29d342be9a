"""A Triton model directory as the registry stores it: which files, and the config it serves with.

Registering takes a model directory (``config.pbtxt``, one numbered version directory, labels,
``warmup/``) and stores those files unchanged. Installing writes them back as a directory of a
model repository, the version directory named after the registry version, and ``config.pbtxt``'s
``version_policy`` set to the versions to serve (the only change to any file; the manifest keeps
the original's digest).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from inference_protocol.names import version_directory

from .errors import InvalidModel

CONFIG = "config.pbtxt"
MAX_CONFIG_BYTES = 1024 * 1024
SKIPPED = ("__pycache__",)  # written by Python when a handler is imported, never part of a model


def parse_config(text: str, where: str) -> pb.ModelConfig:
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except (text_format.ParseError, ValueError, RecursionError) as exc:
        raise InvalidModel(f"{where} is not a valid Triton model config: {str(exc).splitlines()[0]}") from None


def read_config(model_dir: Path) -> pb.ModelConfig:
    path = model_dir / CONFIG
    if not path.is_file():
        raise InvalidModel(f"{model_dir} is not a Triton model directory: it has no {CONFIG}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidModel(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise InvalidModel(f"{path} is not UTF-8 text") from None
    return parse_config(text, str(path))


def model_files(model_dir: Path, name: str, version_dir: str | None = None) -> tuple[str, dict[str, Path]]:
    """The version directory chosen and every file to register (relative POSIX path -> file).

    Every numbered directory but the chosen one is left out, and so are hidden files and
    ``__pycache__``; a symbolic link that leads outside ``model_dir`` is refused.
    """
    if not model_dir.is_dir():
        raise InvalidModel(f"{model_dir} is not a directory")
    config = read_config(model_dir)
    if not config.platform and not config.backend:
        raise InvalidModel(f"{model_dir / CONFIG} names no platform or backend: set platform: "
                           '"pytorch_libtorch" or backend: "python"')
    if config.name and config.name != name:
        raise InvalidModel(f"{model_dir / CONFIG} names the model {config.name!r} but --name is {name!r}: the "
                           "served name is the registered name; make them equal or remove `name`")
    versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and version_directory(p.name) is not None),
                      key=int)
    if version_dir is None:
        if len(versions) != 1:
            held = ", ".join(versions) or "none"
            raise InvalidModel(f"{model_dir} holds version directories {held}: register one, chosen with "
                               "--version-dir N")
        version_dir = versions[0]
    elif version_dir not in versions:
        raise InvalidModel(f"{model_dir} has no version directory {version_dir!r} (it holds "
                           f"{', '.join(versions) or 'none'})")
    root = model_dir.resolve()
    files: dict[str, Path] = {}
    for here, dirs, names in os.walk(model_dir):
        rel_dir = Path(here).relative_to(model_dir)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if version_directory(d) is None or d == version_dir]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED)
        for d in dirs:
            if (Path(here) / d).is_symlink():
                raise InvalidModel(f"{rel_dir / d} is a symbolic link to a directory: copy the files instead")
        for file in sorted(names):
            if file.startswith("."):
                continue
            path = Path(here) / file
            if not path.resolve().is_relative_to(root):
                raise InvalidModel(f"{rel_dir / file} is a symbolic link leading outside {model_dir}")
            files[(rel_dir / file).as_posix()] = path
    if not any(rel.startswith(f"{version_dir}/") for rel in files):
        raise InvalidModel(f"version directory {model_dir / version_dir} is empty")
    return version_dir, files


def serving_config(model_dir: Path, versions: Sequence[int]) -> str:
    """``model_dir``'s config.pbtxt with ``version_policy`` set to serve exactly ``versions``."""
    config = read_config(model_dir)
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(versions))
    return text_format.MessageToString(config)
