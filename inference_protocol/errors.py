"""The errors a v2 server answers with, their status codes, and the v2 error body.

Every message is written for the person who sent the request: it says what was wrong
and, where it can, how to fix it. A class carries its HTTP status and its gRPC code;
transports turn errors into those and nothing else does.
"""

from __future__ import annotations

from typing import Any

import orjson

# gRPC status codes (by name) as the HTTP status a v2 HTTP server answers (as Triton maps them).
GRPC_TO_HTTP = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
                "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
                "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}


class ServingError(Exception):
    """Root of every error reported to a client."""

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "OTHER"  # the `reason` label of nv_inference_request_failure


class InvalidInput(ServingError):
    """The request is malformed or does not match the model's configuration."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class NotJSON(InvalidInput):
    """A body whose JSON header does not parse; ``detail`` is the parser's reason."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"the {what} body is not valid JSON: {detail}")
        self.detail = detail


class PayloadTooLarge(InvalidInput):
    """The request body exceeds the server's limit."""

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


class Unsupported(ServingError):
    """An operation this server does not allow in its configuration."""

    http_status = 400
    grpc_code = "UNIMPLEMENTED"


def http_status_of_grpc(code: str) -> int:
    """The HTTP status for a gRPC status code's name; 500 for a name the protocol does not know."""
    return GRPC_TO_HTTP.get(code, 500)


def failure_text(exc: BaseException) -> str:
    """What a client is told of an exception raised by a model: its message, never its class.

    The class and the traceback go to the server log; an empty message says where to look.
    """
    text = str(exc).strip()
    if not text:
        return "it raised an error without a message; the server log has the details"
    return text if len(text) <= 500 else text[:500] + "..."


def brief(value: Any) -> str:
    """A value from a request for a message: short, and never a recursive ``repr``.

    Messages must not echo whole bodies, and a list nested a thousand deep would
    exhaust the stack in ``repr``.
    """
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        if any(isinstance(item, (list, dict)) for item in value):
            return "[[...]]"
        return "[" + ", ".join(brief(item) for item in value[:8]) + (", ...]" if len(value) > 8 else "]")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_body(message: str) -> bytes:
    """The v2 error body: ``{"error": message}``."""
    return orjson.dumps({"error": message})


def error_message(body: bytes) -> str | None:
    """The message of a v2 error body ``{"error": "..."}``, or None when ``body`` is not one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    message = obj.get("error") if isinstance(obj, dict) else None
    return message if isinstance(message, str) else None
