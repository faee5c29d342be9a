"""A worker process, started with ``posix_spawn`` and waited for through a pidfd.

Not ``fork``: grpcio's fork handlers run in a forking process whose gRPC threads are busy,
and they log a line (not JSON) to stderr on every start; torch's threads do not survive a
fork either. ``posix_spawn`` (glibc's clone with CLONE_VFORK, then exec) runs no fork
handlers. The settings go to the child's stdin through a pipe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys


class WorkerProcess:
    """``python -m serving.frontend.worker`` with ``config`` on its stdin."""

    def __init__(self, config: bytes) -> None:
        read, write = os.pipe()
        try:
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "serving.frontend.worker"], os.environ,
                                      file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)])
        finally:
            os.close(read)
        try:
            os.write(write, config)  # a few KiB: the pipe holds them, and the child reads them first
        finally:
            os.close(write)
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal), once the process has exited."""
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            pidfd = os.pidfd_open(self.pid)

            def reap() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._exited is not None and not self._exited.done():
                    self._exited.set_result(self.returncode)

            loop.add_reader(pidfd, reap)
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
