"""A real headless Chromium (Debian's /usr/bin/chromium), one page, driven over the DevTools
protocol: a websocket and JSON messages, nothing else (no driver, no browser download).

What the browser test needs and no more: extra request headers (the login proxy's user),
answering requests to a host that is not there (the ASE's logo), opening a URL, a real
mouse click, reading the page, and full-page screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
START_SECONDS = 30.0  # until Chromium says where its DevTools listen
CALL_SECONDS = 30.0  # one command's answer, or one awaited event
# Headless, as root, on a machine without a network: no sandbox (root), and none of the
# background connections Chromium makes at start (they are refused here, many at a time).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--lang=en-US",
    "--remote-debugging-port=0",
]


class Chromium:
    """`async with Chromium(profile) as page:` a fresh browser with an empty profile."""

    def __init__(self, profile: Path, log: Path) -> None:
        self.profile = profile
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._next_id = 0
        self._answers: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str, Callable[[dict], bool], asyncio.Future]] = []
        self._handlers: dict[str, Callable[[dict], Awaitable[None]]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"], stdout=log, stderr=log)
        try:
            port = await self._devtools_port()
            async with httpx.AsyncClient() as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list", timeout=CALL_SECONDS)).json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            self._socket = await connect(url, max_size=None, open_timeout=CALL_SECONDS)
            self._reader = asyncio.create_task(self._read())
            for domain in ("Page", "Network", "Runtime"):
                await self.send(f"{domain}.enable")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            try:
                await asyncio.wait_for(self._socket.close(), 5)
            except (OSError, asyncio.TimeoutError):
                pass
        if self._reader is not None:
            self._reader.cancel()
        if self._process is not None:
            self._process.terminate()  # only the browser this object started, by its pid
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    async def _devtools_port(self) -> int:
        # Chromium writes the port it bound (port 0: any free one) into the profile.
        marker = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while loop.time() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}; see {self.log}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.1)
        raise TimeoutError(f"chromium did not open its DevTools port within {START_SECONDS}s; see {self.log}")

    async def _read(self) -> None:
        assert self._socket is not None
        async for raw in self._socket:
            message = json.loads(raw)
            if "id" in message:
                future = self._answers.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            for waiter in [w for w in self._waiters if w[0] == method and w[1](params)]:
                self._waiters.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(params)
            handler = self._handlers.get(method)
            if handler is not None:
                task = asyncio.create_task(handler(params))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def send(self, method: str, **params: Any) -> dict:
        """One DevTools command; its result, or an error naming the command."""
        assert self._socket is not None
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._answers[self._next_id] = future
        await self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, CALL_SECONDS)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def expect(self, event: str, match: Callable[[dict], bool] = lambda params: True) -> asyncio.Future:
        """A future of the next `event` whose params `match`: ask before the action that causes it."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((event, match, future))
        return future

    def on(self, event: str, handler: Callable[[dict], Awaitable[None]]) -> None:
        self._handlers[event] = handler

    # --- what a test does ---------------------------------------------------------------

    async def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    async def extra_headers(self, headers: dict[str, str]) -> None:
        """Sent with every request from now on, as a login proxy in front would add them."""
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def serve(self, url_pattern: str, content_type: str, body: bytes) -> None:
        """Answer every request matching `url_pattern` with `body`, without the network."""

        async def fulfil(params: dict) -> None:
            headers = [{"name": "Content-Type", "value": content_type}]
            await self.send("Fetch.fulfillRequest", requestId=params["requestId"], responseCode=200, responseHeaders=headers, body=base64.b64encode(body).decode())

        self.on("Fetch.requestPaused", fulfil)
        await self.send("Fetch.enable", patterns=[{"urlPattern": url_pattern, "requestStage": "Request"}])

    async def open(self, url: str) -> dict:
        """Navigate and wait for the load; the main document's response (status, headers)."""
        response = self.expect("Network.responseReceived", lambda params: params.get("type") == "Document")
        loaded = self.expect("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, CALL_SECONDS)
        return (await asyncio.wait_for(response, CALL_SECONDS))["response"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real left click in the middle of the element (scrolled to first, as a person
        would), then the load it leads to."""
        x, y = await self.evaluate(
            f"(() => {{ const element = document.querySelector({json.dumps(selector)}); element.scrollIntoView({{block: 'center'}});"
            " const box = element.getBoundingClientRect(); return [box.x + box.width / 2, box.y + box.height / 2]; })()"
        )
        loaded = self.expect("Page.loadEventFired")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        await asyncio.wait_for(loaded, CALL_SECONDS)

    async def screenshot(self, path: Path) -> None:
        """The whole page, however long, as a PNG."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
