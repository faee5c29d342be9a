"""``python -m sidecar.injector``: parse the settings once, set up logging, serve until a signal."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence

from .server import serve_until_signal
from .settings import Settings, parse


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv)
    configure_logging(settings)
    sys.exit(asyncio.run(serve_until_signal(settings)))


if __name__ == "__main__":
    main()
