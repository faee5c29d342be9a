"""The kinds of model a repository holds, by Triton's platform and backend names.

`model_kind` tells which kind a ``config.pbtxt`` describes: from its ``platform`` or
``backend`` when it names one, else from the model file in its newest version directory,
as Triton completes such a config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from .errors import ConfigError
from .paths import check_filename

TORCHSCRIPT = "pytorch_libtorch"
PYTHON = "python"
ONNX = "onnxruntime_onnx"
ENSEMBLE = "ensemble"
# each kind of model: Triton's platform and backend names for it, and its default model file
PLATFORMS: dict[str, tuple[str, str, str]] = {
    TORCHSCRIPT: ("pytorch_libtorch", "pytorch", "model.pt"),
    ONNX: ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
    PYTHON: ("", "python", "model.py"),
    ENSEMBLE: ("ensemble", "", ""),
}
DEFAULT_FILENAMES = {kind: filename for kind, (_, _, filename) in PLATFORMS.items()}
# a config that names neither platform nor backend: the kind is found from the model's file, as
# Triton finds it (this order)
DETECTED = (ONNX, TORCHSCRIPT, PYTHON)
# fills a config's missing inputs, outputs and max_batch_size from the model itself (Triton's
# auto-complete); given the kind, the config and the model's directory
Completer = Callable[[str, pb.ModelConfig, Path], None]


def model_kind(config: pb.ModelConfig, model_dir: Path) -> str:
    """The kind of model a config describes (a key of `PLATFORMS`); sets Triton's names on the proto.

    Either name is enough (``backend: "onnxruntime"`` is ``platform: "onnxruntime_onnx"``). A
    config with neither gets them from the model file in its newest version directory:
    ``default_model_filename`` when set, else ``model.onnx``, ``model.pt``, ``model.py``.
    """
    for kind, (platform, backend, _) in PLATFORMS.items():
        if (config.platform, config.backend) in ((platform, backend), (platform, ""), ("", backend)) and \
                (config.platform or config.backend):
            config.platform, config.backend = platform, backend
            return kind
    if config.platform or config.backend:
        raise ConfigError(
            f"unsupported platform {config.platform!r} / backend {config.backend!r}: use platform "
            "\"pytorch_libtorch\" (TorchScript model.pt), \"onnxruntime_onnx\" (model.onnx) or \"ensemble\", "
            "or backend \"python\" (model.py)")
    versions = sorted((int(p.name) for p in _subdirectories(model_dir) if p.name.isdigit() and int(p.name) > 0),
                      reverse=True)
    named = config.default_model_filename
    if named:
        check_filename(named, "default_model_filename")
    for version in versions[:1]:  # the newest version decides: it is the one that serves
        for kind in DETECTED:
            filename = DEFAULT_FILENAMES[kind]
            if named and Path(named).suffix == Path(filename).suffix:
                filename = named
            if (model_dir / str(version) / filename).is_file():
                config.platform, config.backend = PLATFORMS[kind][:2]
                return kind
    raise ConfigError("the config names no platform or backend and no model file says which: set platform "
                      "(\"pytorch_libtorch\", \"onnxruntime_onnx\", \"ensemble\") or backend (\"python\"), or put "
                      "model.pt, model.onnx or model.py in the newest version directory")


def _subdirectories(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def is_model_directory(path: Path) -> bool:
    """Whether ``path`` holds a model: a config.pbtxt, or (Triton's auto-complete) a version
    directory whose model file says which kind it is, as ``model.onnx`` does with no config."""
    if not path.is_dir():
        return False
    if (path / "config.pbtxt").is_file():
        return True
    try:
        model_kind(pb.ModelConfig(), path)
    except ConfigError:
        return False
    return True
