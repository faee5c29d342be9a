"""A tritonserver and a serve side by side on one repository, for one test module."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.settings import Settings
from tests.conftest import RunningServer

from .answers import Answer, http
from .triton import REPOSITORY, Triton


@dataclass
class Pair:
    """The oracle and the server under test, asked the same things."""

    triton: Triton
    serve: RunningServer

    @property
    def serve_grpc(self) -> str:
        return f"127.0.0.1:{self.serve.server.grpc_port}"

    def http(self, method: str, path: str, body: Any = None) -> tuple[Answer, Answer]:
        """(Triton's answer, serve's answer) to one HTTP request."""
        return http(self.triton.url, method, path, body), http(self.serve.url, method, path, body)

    def both(self, ask: Callable[[str], Any], grpc: bool = False) -> tuple[Any, Any]:
        """``ask(url)`` on each server's HTTP (or gRPC) address: (Triton's, serve's)."""
        if grpc:
            return ask(self.triton.grpc_url), ask(self.serve_grpc)
        return ask(self.triton.url), ask(self.serve.url)

    def stop(self) -> None:
        self.serve.stop()  # tritonserver is stopped by start_triton's fixture


def start_serve(repository: Path = REPOSITORY, **wanted: Any) -> RunningServer:
    """serve on ``repository``; settings this serve does not have yet are left out (and their test says so)."""
    fields = {field.name for field in dataclasses.fields(Settings)}
    return RunningServer(repository, **{key: value for key, value in wanted.items() if key in fields})


def start_pair(start_triton: Callable[..., Triton], *triton_flags: str, repository: Path = REPOSITORY,
               **serve_settings: Any) -> Pair:
    triton = start_triton(repository, *triton_flags)
    return Pair(triton, start_serve(repository, server_name="triton", **serve_settings))
