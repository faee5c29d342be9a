"""The same request to two servers, and their answers in a form that compares.

An answer is what a client sees: the HTTP status and the decoded JSON body, or the gRPC status
code and message. Triton's messages are the reference; serve may add a hint after them (one
sentence saying how to fix the request), so texts compare by prefix (`same_text`), and
Python tracebacks (Triton's "\\n\\nAt:\\n  file(line): function" tail) are left out.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

MAX_BODY = 4 * 1024 * 1024  # bytes read from either server's answer


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the decoded JSON, None when empty, the text when not JSON

    @property
    def error(self) -> str:
        """The ``error`` of a JSON error body ("" when there is none)."""
        return str(self.body.get("error", "")) if isinstance(self.body, dict) else ""


def http(url: str, method: str, path: str, body: Any = None, timeout: float = 30) -> Answer:
    """One request to ``http://url/path`` with a JSON body; any status is an answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as failure:
        status, raw = failure.code, failure.read(MAX_BODY)
    if not raw.strip():
        return Answer(status, None)
    try:
        return Answer(status, json.loads(raw))
    except ValueError:
        return Answer(status, raw.decode(errors="replace"))


@dataclass(frozen=True)
class GrpcAnswer:
    code: str  # grpc.StatusCode's name, "OK" on success
    message: str
    value: Any = None


def grpc_call(call: Callable[[], Any]) -> GrpcAnswer:
    """Run a tritonclient.grpc call; its error becomes the answer instead of an exception."""
    try:
        return GrpcAnswer("OK", "", call())
    except InferenceServerException as failure:
        status = failure.status() or ""
        return GrpcAnswer(status.removeprefix("StatusCode."), failure.message() or "")
    except grpc.RpcError as failure:
        return GrpcAnswer(failure.code().name, failure.details() or "")


def without_traceback(message: str) -> str:
    """The message without the Python traceback Triton's backend appends."""
    return message.split("\n\nAt:\n", 1)[0]


def same_text(serve: str, triton: str) -> bool:
    """serve says what Triton says (tracebacks aside), and at most adds to it."""
    return without_traceback(serve).startswith(without_traceback(triton))


def shape_of(value: Any) -> Any:
    """The structure of a JSON value: keys and the types of leaves, list items merged."""
    if isinstance(value, dict):
        return {key: shape_of(item) for key, item in value.items()}
    if isinstance(value, list):
        merged: list[Any] = []
        for item in value:
            if (shape := shape_of(item)) not in merged:
                merged.append(shape)
        return merged
    return type(value).__name__
