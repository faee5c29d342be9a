"""The error hierarchy. Transports turn these into status codes; nothing else does.

Every message is written for the person who sent the request: it says what was wrong
and, where it can, how to fix it. The protocol's errors (`ServingError`, the root, and
`InvalidInput`, `NotFound`, `Unavailable`, ...) are `inference_protocol.errors`', shared
with the sidecar; this module adds the runtime's own and is the public place to import
all of them from.
"""

from __future__ import annotations

from inference_protocol.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    Unsupported,
    failure_text,
)

__all__ = ["ServingError", "InvalidInput", "PayloadTooLarge", "NotFound", "Unavailable", "Unsupported", "ModelError",
           "ConfigError", "failure_text"]


class ModelError(ServingError):
    """The model's handler raised while loading or predicting."""

    reason = "BACKEND"


class ConfigError(ServingError):
    """A model directory or config.pbtxt that cannot be loaded."""
