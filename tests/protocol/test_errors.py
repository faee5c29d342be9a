"""The error hierarchy's status codes, the gRPC -> HTTP map and the v2 error body."""

from __future__ import annotations

import pytest

import serving
from inference_protocol import errors
from inference_protocol.errors import GRPC_TO_HTTP, error_body, error_message, failure_text, http_status_of_grpc


@pytest.mark.parametrize("error, status, code", [
    (errors.ServingError, 500, "INTERNAL"), (errors.InvalidInput, 400, "INVALID_ARGUMENT"),
    (errors.PayloadTooLarge, 413, "INVALID_ARGUMENT"), (errors.NotFound, 404, "NOT_FOUND"),
    (errors.Unavailable, 503, "UNAVAILABLE"), (errors.Unsupported, 400, "UNIMPLEMENTED"),
])
def test_each_error_has_its_http_status_and_grpc_code(error: type[errors.ServingError], status: int,
                                                      code: str) -> None:
    assert (error.http_status, error.grpc_code) == (status, code)
    assert issubclass(error, errors.ServingError)


def test_serving_keeps_its_public_errors() -> None:
    from serving import errors as public
    assert serving.ServingError is public.ServingError is errors.ServingError
    assert serving.InvalidInput is public.InvalidInput is errors.InvalidInput
    assert issubclass(serving.ModelError, errors.ServingError) and issubclass(serving.ConfigError, errors.ServingError)
    assert serving.ModelError.reason == "BACKEND" and serving.Unavailable.reason == "REJECTED"


def test_grpc_codes_map_to_http_as_triton_does() -> None:
    assert GRPC_TO_HTTP["NOT_FOUND"] == 404 and GRPC_TO_HTTP["UNAVAILABLE"] == 503
    assert GRPC_TO_HTTP["INVALID_ARGUMENT"] == 400 and GRPC_TO_HTTP["DEADLINE_EXCEEDED"] == 504
    assert http_status_of_grpc("RESOURCE_EXHAUSTED") == 429 and http_status_of_grpc("NEW_CODE") == 500
    for error in (errors.InvalidInput, errors.NotFound, errors.Unavailable, errors.ServingError):
        assert GRPC_TO_HTTP[error.grpc_code] == error.http_status  # both transports tell a client the same


def test_error_bodies_round_trip() -> None:
    assert error_body("no such model") == b'{"error":"no such model"}'
    assert error_message(error_body("no such model")) == "no such model"
    assert error_message(b"<html>") is None and error_message(b'{"error": 5}') is None
    assert error_message(b"[1]") is None


def test_failure_text_is_the_message_bounded() -> None:
    assert failure_text(ValueError("  bad  ")) == "bad"
    assert "server log" in failure_text(RuntimeError())
    assert failure_text(ValueError("x" * 600)) == "x" * 500 + "..."
