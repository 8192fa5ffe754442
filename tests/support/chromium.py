"""A real headless Chromium driven over the Chrome DevTools Protocol (CDP), for tests of the admin page.

No driver package: Chromium starts with `--remote-debugging-port=0`, writes the port it chose to
`DevToolsActivePort` in its (new, empty) profile directory, and the test talks CDP over an aiohttp websocket to
the page target. What the page logs is collected: console calls (`Runtime.consoleAPICalled`), uncaught
exceptions (`Runtime.exceptionThrown`) and browser log entries (`Log.entryAdded`: failed loads, CSP
violations).

`find_chromium()` → the binary or None. Under CI=true a missing binary is a failure (the caller decides).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

# Without the background-networking flags Chromium phones home at start (component updates, sync), and on a
# closed network those connections are refused and logged.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(Exception):
    pass


class Browser:
    def __init__(self, binary: str):
        self.binary = binary
        self.profile = Path(tempfile.mkdtemp(prefix="gatewatch-chromium-"))
        self.proc: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._event_waiters: list[tuple[str, asyncio.Future]] = []
        self._reader: asyncio.Task | None = None
        self.console: list[dict] = []  # {"kind": console|exception|log, "level", "text", "source"}

    async def start(self, timeout_s: float = 30.0) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (spawning returns at once; nothing here waits on it)
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self.proc.poll() is not None:
                raise CdpError(f"chromium exited with {self.proc.returncode} before opening its DevTools port")
            if loop.time() > deadline:
                raise CdpError("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            await self.send(domain)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": False})

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            self._observe(data.get("method", ""), data.get("params", {}))

    def _observe(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"kind": "console", "level": params.get("type"), "text": text, "source": "console"})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            self.console.append({"kind": "exception", "level": "error", "text": text, "source": "javascript"})
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            self.console.append({"kind": "log", "level": e.get("level"), "text": e.get("text", ""),
                                 "source": e.get("source")})
        for name, fut in list(self._event_waiters):
            if name == method and not fut.done():
                fut.set_result(params)
                self._event_waiters.remove((name, fut))

    async def send(self, method: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self._ws.send_str(json.dumps({"id": i, "method": method, "params": params or {}}))
        return await asyncio.wait_for(fut, timeout_s)

    async def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        loaded = asyncio.get_running_loop().create_future()
        self._event_waiters.append(("Page.loadEventFired", loaded))
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout_s)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20.0, interval_s: float = 0.1) -> Any:
        """Evaluate until truthy; return that value. The timeout is a bound on waiting, not a measurement."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"still false after {timeout_s} s: {expression}")
            await asyncio.sleep(interval_s)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            # its own session (start_new_session): the group holds the browser and its renderer/zygote children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def browser(binary: str):
    b = Browser(binary)
    try:
        await b.start()
        yield b
    finally:
        await b.close()
