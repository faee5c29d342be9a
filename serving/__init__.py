"""shadowserve's model-serving runtime.

The public API: `Model` (subclass it for a custom handler), the errors a handler may
raise (`InvalidInput` answers 400, anything else 500), and `run` (serve with settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError, InvalidInput, ModelError, NotFound, ServingError, Unavailable
from .model import Model

if TYPE_CHECKING:
    from .settings import Settings

__version__ = "0.1.0"
__all__ = ["Model", "ServingError", "InvalidInput", "ModelError", "NotFound", "Unavailable", "ConfigError", "run",
           "__version__"]


def run(settings: Settings) -> int:
    """Serve the settings' model repository until SIGTERM; returns the exit status."""
    from .serve import run as _run
    return _run(settings)
