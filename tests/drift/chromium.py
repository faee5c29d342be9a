"""A real headless Chromium for the report tests, driven over the DevTools protocol (aiohttp's
websocket client): it opens a page, records every console message, uncaught exception, log
entry and network request, and returns the page's text and a full-page screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0", "about:blank"]
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


@dataclass
class Page:
    """What a page showed and did while it loaded."""

    text: str
    html: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error log entries
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself included
    width: int = 0  # the page's scroll width: wider than the window means something ran off the side


class Chromium:
    """One browser process; `open` loads a file and screenshots it. Use as a context manager."""

    def __init__(self, program: str, profile: Path, timeout: float = 30.0) -> None:
        self.program, self.profile, self.timeout = program, profile, timeout
        self.ids = itertools.count(1)

    def __enter__(self) -> Chromium:
        self.process = subprocess.Popen([self.program, *FLAGS[:-1], f"--user-data-dir={self.profile}", FLAGS[-1]],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.address = ""
        ready = threading.Event()
        self.drain = threading.Thread(target=self._drain, args=(ready,), daemon=True)
        self.drain.start()
        if not ready.wait(self.timeout) or not self.address:
            self.process.kill()
            raise AssertionError(f"chromium gave no DevTools address within {self.timeout} s "
                                 f"(exit status {self.process.poll()})")
        return self

    def _drain(self, ready: threading.Event) -> None:
        """Read Chromium's standard error to its end (a full pipe would stall it); the first
        thing it says that matters is its DevTools address."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = LISTENING.search(line)
            if found and not ready.is_set():
                self.address = found[1]
                ready.set()
        ready.set()  # exited without one

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait(timeout=self.timeout)
        self.drain.join(self.timeout)

    def open(self, path: Path, screenshot: Path, width: int = 1280) -> Page:
        """Load ``path``, wait for its load event, write a full-page PNG to ``screenshot``."""
        page, png = asyncio.run(asyncio.wait_for(self._open(path.resolve().as_uri(), width), self.timeout))
        screenshot.write_bytes(png)
        return page

    async def _open(self, url: str, width: int) -> tuple[Page, bytes]:
        async with aiohttp.ClientSession() as http, http.ws_connect(self.address, max_msg_size=0) as ws:
            events: list[dict[str, Any]] = []
            target = await self._call(ws, events, "Target.createTarget", url="about:blank")
            attached = await self._call(ws, events, "Target.attachToTarget", targetId=target["targetId"],
                                        flatten=True)
            session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await self._call(ws, events, f"{domain}.enable", session)
            await self._call(ws, events, "Emulation.setDeviceMetricsOverride", session, width=width, height=900,
                             deviceScaleFactor=1, mobile=False)
            await self._call(ws, events, "Page.navigate", session, url=url)
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                events.append(await ws.receive_json())
            text = await self._call(ws, events, "Runtime.evaluate", session, returnByValue=True,
                                    expression="document.body.innerText")
            html = await self._call(ws, events, "Runtime.evaluate", session, returnByValue=True,
                                    expression="document.documentElement.outerHTML")
            width_now = await self._call(ws, events, "Runtime.evaluate", session, returnByValue=True,
                                         expression="document.documentElement.scrollWidth")
            size = (await self._call(ws, events, "Page.getLayoutMetrics", session))["cssContentSize"]
            shot = await self._call(ws, events, "Page.captureScreenshot", session, format="png",
                                    captureBeyondViewport=True,
                                    clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
            await self._call(ws, events, "Target.closeTarget", targetId=target["targetId"])
        page = Page(text["result"]["value"], html["result"]["value"], _errors(events), _requests(events),
                    int(width_now["result"]["value"]))
        return page, base64.b64decode(shot["data"])

    async def _call(self, ws: aiohttp.ClientWebSocketResponse[bool], events: list[dict[str, Any]], method: str,
                    session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        number = next(self.ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await ws.send_json(message)
        while True:
            reply = await ws.receive_json()
            if reply.get("id") == number:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return dict(reply["result"])
            events.append(reply)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            found.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url')})")
    return found


def _requests(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
