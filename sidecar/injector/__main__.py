"""``python -m sidecar.injector``: parse the settings once, set up logging, serve until a signal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from serving import logs  # the same log formats as serve and the sidecar

from .server import serve_until_signal
from .settings import parse


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv)
    logs.configure(settings.log_format, settings.log_level)
    sys.exit(asyncio.run(serve_until_signal(settings)))


if __name__ == "__main__":
    main()
