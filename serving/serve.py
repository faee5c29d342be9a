"""The `serve` entrypoint (also ``python -m serving`` and ``python -m serving.serve``)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from . import logs
from .app import serve_until_signal
from .settings import Settings, parse


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on asyncio's default loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        pass
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    if factory is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(main)


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit status."""
    logs.configure(settings.log_format, settings.log_level)
    return _run(serve_until_signal(settings))


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv)
    if settings.model_source:  # a registry that hangs holds a poll seconds, not minutes
        from model_registry.store import bound_calls
        bound_calls(os.environ)
    sys.exit(run(settings))


if __name__ == "__main__":
    main()
