"""The demo's child processes: the same CLIs a user runs, each in its own process group.

A `Child` is started with its log going to a file, waits for the start line that names its
ports, and stops with SIGTERM (SIGKILL for anything left after a grace period). `Children`
stops every child it started, in reverse order, whatever happened: Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class StartError(RuntimeError):
    """A child that exited or did not say where it listens; the message holds its log's tail."""


class Child:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - outlives this call; closed in stop()
        self.process = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.exit_status: int | None = None
        self.signalled = False

    def tail(self, lines: int = 8) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_for(self, message_start: str, timeout: float = 120) -> dict[str, Any]:
        """The first JSON log line whose message starts with ``message_start``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.log.read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if str(entry.get("message", "")).startswith(message_start):
                    return entry
            seen = len(lines)
            if self.process.poll() is not None:
                raise StartError(f"{self.name} exited with status {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise StartError(f"{self.name} did not log {message_start!r} within {timeout:.0f}s:\n{self.tail()}")

    def terminate(self) -> None:
        """SIGTERM, once: a second one asks a draining server to stop without waiting."""
        if not self.signalled:
            self.signalled = True
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (unless sent already), wait up to ``grace``, then SIGKILL the process group."""
        if self.exit_status is None:
            self.terminate()
            try:
                self.exit_status = self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.exit_status = self.process.wait()
            self._log_file.close()
        return self.exit_status


class Children:
    """Every child the demo started; `stop_all` ends them in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], log: Path) -> Child:
        child = Child(name, argv, log)
        self.children.append(child)
        return child

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM to every child at once, as Kubernetes stops a pod, then wait for each."""
        for child in self.children:
            child.terminate()
        return {child.name: child.stop() for child in reversed(self.children)}

    def running(self) -> list[str]:
        return [c.name for c in self.children if c.process.poll() is None]


def command(module: str) -> list[str]:
    """``python -m module`` with this interpreter: the CLIs the README documents."""
    return [sys.executable, "-m", module]
