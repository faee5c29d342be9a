"""How a long-running entrypoint (serve, the sidecar) is stopped: SIGTERM or SIGINT drains, a second one does not wait.

Kubernetes sends SIGTERM and waits a grace period before SIGKILL; a person at a terminal
presses Ctrl-C, and again when the drain takes too long. Only the standard library is
imported, so that the sidecar shares this without the runtime's dependencies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable


def stop_on_signals(stopping: asyncio.Event, force_stop: Callable[[], None], log: logging.Logger) -> None:
    """Set ``stopping`` on the first SIGTERM or SIGINT; call ``force_stop`` on the next. Call it on the running loop."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("%s again: stopping without waiting", signal.Signals(signum).name)
            force_stop()
        else:
            log.info("%s: draining", signal.Signals(signum).name)
            stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
