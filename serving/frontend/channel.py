"""The hand-off socket's protocol, on both sides: frames in, frames out, writes coalesced.

Frames sent during one turn of the event loop leave in one ``writelines`` at its end, so
a burst of responses (a batch just computed) costs one system call, not one each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .ipc import FrameError, FrameReader, encode_frame

log = logging.getLogger(__name__)

OnFrame = Callable[[dict[str, Any], memoryview], None]


class Channel(asyncio.Protocol):
    """One end of a hand-off connection; ``on_frame`` sees each frame, ``closed`` is set when it ends."""

    def __init__(self, on_frame: OnFrame, max_frame: int, name: str) -> None:
        self.on_frame = on_frame
        self.name = name
        self.reader = FrameReader(max_frame)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self._out: list[bytes | memoryview] = []
        self._scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's are no subclass)
        # a burst of frames may queue up while the peer is busy: pause only well past it
        self.transport.set_write_buffer_limits(high=64 * 1024 * 1024)  # type: ignore[union-attr]  # set just above

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            log.error("%s: %s; closing the channel", self.name, exc)
            self.close()
            return
        for header, inline in frames:
            try:
                self.on_frame(header, inline)
            except Exception:  # one bad frame must not take the channel down
                log.exception("%s: a %r frame failed", self.name, header.get("t"))

    def send(self, header: dict[str, Any], inline: Sequence[bytes | memoryview] = ()) -> bool:
        """Queue a frame for the end of this turn of the loop; False when the channel is closed."""
        if self.transport is None or self.transport.is_closing():
            return False
        self._out += encode_frame(header, inline)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._out.clear()
        self.closed.set()
