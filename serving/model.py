"""The handler API: `serving.Model`, and loading a handler class from a model repository."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .config import ModelSpec
    from .inprocess import InProcess


class Model:
    """Base class of a model handler: subclass it in ``<repo>/<model>/<version>/model.py``.

    The runtime creates one object per model instance, sets ``name``, ``version``,
    ``config`` (the parsed config.pbtxt), ``parameters`` (its ``parameters`` map),
    ``path`` (the version directory), ``device`` (a ``torch.device``) and ``models`` (a
    `serving.inprocess.InProcess`: a handler may call the server's other models with
    ``await self.models.infer(name, None, inputs)`` in an ``async def predict``, or
    ``self.models.infer_blocking(...)`` in a plain one), then calls `load` once, on a
    worker thread.

    `predict` receives a whole dynamic batch: numeric inputs as torch tensors already on
    ``self.device``, concatenated along dim 0 when ``max_batch_size > 0``; BYTES inputs as
    numpy object arrays of ``bytes``. It returns a dict of tensors or numpy arrays, one per
    output in config.pbtxt, with the same leading dimension; the runtime moves them to the
    host and splits them back per request. ``async def predict`` works too; a plain
    ``def predict`` runs on a thread of its own instance, never on the event loop.

    Example::

        import serving, torch

        class Classifier(serving.Model):
            def load(self) -> None:
                self.net = torch.jit.load(self.path / "weights.pt", map_location=self.device)

            def predict(self, inputs):
                return {"PROBS": self.net(inputs["PIXELS"]).softmax(-1)}
    """

    name: str
    version: int
    config: ModelSpec
    parameters: dict[str, str]
    path: Path
    device: torch.device
    models: InProcess | None = None  # the server's models, set before `load`; None outside a server

    def __init__(self, *, name: str, version: int, config: ModelSpec, path: Path, device: torch.device) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.parameters = dict(config.parameters)
        self.path = path
        self.device = device

    def load(self) -> None:
        """Load weights and whatever else predict needs. Raise to mark the model unavailable."""

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Compute the outputs of one batch; see the class docstring."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(inputs)")

    def unload(self) -> None:
        """Release what load acquired; called once when the version is unloaded."""


class RequestHandler(Model):
    """A handler that takes the dynamic batch as the list of its requests, not concatenated inputs.

    The instance calls `execute_requests` with each request's payload (``inputs``,
    ``outputs`` and, where the transport has them, ``id``, ``parameters`` and ``stream``, a
    `serving.streaming.ResponseStream` for a request answered with a stream of responses)
    and expects one result per request, in order: a dict of host arrays, a `ServingError`
    that fails only that request, or None for a request answered through its stream. An
    ``async def execute_requests`` runs on the event loop. Triton's Python backend models
    run through one (`serving.backends.python`).
    """

    def execute_requests(self, requests: list[Any]) -> list[Any]:
        """Compute one result per request; see the class docstring."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute_requests(requests)")


# one model file imported at a time: while it is, its directory is on sys.path (see `sibling_imports`)
_IMPORTING = threading.Lock()


@contextlib.contextmanager
def sibling_imports(directory: Path) -> Iterator[None]:
    """Let a model file import the files beside it by their bare names (``from utils import f``), as Triton does.

    The directory is on ``sys.path`` only while the model file is imported, one model at a time,
    and the modules found there leave ``sys.modules`` afterwards (the model keeps what it
    imported), so two models with a ``utils.py`` each get their own.
    """
    root = directory.resolve()
    with _IMPORTING:
        before = set(sys.modules)
        sys.path.insert(0, str(root))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # the model file may have taken it off itself
                sys.path.remove(str(root))
            for name in set(sys.modules) - before:
                file = getattr(sys.modules[name], "__file__", None)
                if file and Path(file).resolve().is_relative_to(root):
                    del sys.modules[name]


def import_model_module(model_file: Path, model_name: str, version: int, label: str = "") -> ModuleType:
    """Import a version's ``model.py`` under a name of its own (`forget_handler_module` forgets it)."""
    label = label or model_file.name
    if not model_file.is_file():
        raise ConfigError(f"{label} is missing: a python-backend version directory needs it")
    module_name = f"serving_handlers.{model_name}.v{version}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {label}: give a Python file (model.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with sibling_imports(model_file.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"importing {label} failed: {exc or 'it raised an error without a message'}") from exc
    return module


def load_handler_class(model_file: Path, model_name: str, version: int, label: str = "") -> type[Model]:
    """Import ``model.py`` and return the one `serving.Model` subclass it defines.

    ``label`` names the file in messages (relative to the repository, as the caller knows it).
    """
    label = label or model_file.name
    return handler_in_module(import_model_module(model_file, model_name, version, label), label)


def handler_in_module(module: ModuleType, label: str) -> type[Model]:
    """The one `serving.Model` subclass an imported ``model.py`` defines."""
    module_name = module.__name__
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Model) and obj is not Model
               and obj.__module__ == module_name]
    if len(classes) != 1:
        sys.modules.pop(module_name, None)
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ConfigError(f"{label} must define exactly one serving.Model subclass (found: {found})")
    return classes[0]


def forget_handler_module(model_name: str, version: int) -> None:
    sys.modules.pop(f"serving_handlers.{model_name}.v{version}", None)
