"""The error hierarchy. Transports turn these into status codes; nothing else does.

Every message is written for the person who sent the request: it says what was wrong
and, where it can, how to fix it.
"""

from __future__ import annotations


def failure_text(exc: BaseException) -> str:
    """What a client is told of an exception raised by a model: its message, never its class.

    The class and the traceback go to the server log; an empty message says where to look.
    """
    text = str(exc).strip()
    if not text:
        return "it raised an error without a message; the server log has the details"
    return text if len(text) <= 500 else text[:500] + "..."


class ServingError(Exception):
    """Root of every error the runtime reports to a client."""

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "OTHER"  # the `reason` label of nv_inference_request_failure


class InvalidInput(ServingError):
    """The request is malformed or does not match the model's configuration."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    """The request body exceeds --max-request-bytes."""

    http_status = 413


class NotFound(ServingError):
    """Unknown model or version."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Unavailable(ServingError):
    """Not ready, overloaded, timed out in the queue, or draining."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "REJECTED"


class ModelError(ServingError):
    """The model's handler raised while loading or predicting."""

    reason = "BACKEND"


class ConfigError(ServingError):
    """A model directory or config.pbtxt that cannot be loaded."""


class Unsupported(ServingError):
    """An operation this server does not allow in its configuration."""

    http_status = 400
    grpc_code = "UNIMPLEMENTED"
