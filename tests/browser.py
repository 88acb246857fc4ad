"""Headless Chromium driven over the DevTools protocol on a pipe: no driver, no extra package.

``open_page`` loads a file, waits for its load event, and returns what a reader's browser
would show: console errors and uncaught exceptions, images that did not load, the page's
width against the window's, and a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome")
NOT_FOUND = "Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    page_width: int = 0
    window_width: int = 0
    screenshot: bytes = b""


class _Pipe:
    """One DevTools session: JSON messages separated by NUL bytes on fds 3 (in) and 4 (out)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire() -> None:  # in the child: its fd 3 reads our messages, fd 4 writes its own
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        return self._until(lambda m: m.get("method") == method, timeout, keep=False)

    def _until(self, wanted: Any, timeout: float, keep: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                if "method" in message:
                    self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                raise TimeoutError("Chromium did not answer in time" if left <= 0 else "Chromium exited")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


_CHECK = """JSON.stringify({
  images: Array.from(document.images).map(i => [i.alt || i.src.slice(0, 40), i.complete && i.naturalWidth > 0]),
  pageWidth: document.documentElement.scrollWidth,
  windowWidth: window.innerWidth,
})"""


def open_page(path: Path, width: int = 1280, height: int = 900, executable: str | None = None) -> Page:
    executable = executable or find_chromium()
    if executable is None:
        raise FileNotFoundError(NOT_FOUND)
    with tempfile.TemporaryDirectory(prefix="tamperaudit-chromium-") as profile:
        pipe = _Pipe(executable, Path(profile))
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                pipe.send(domain, session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout=60)
            checked = pipe.send("Runtime.evaluate", {"expression": _CHECK, "returnByValue": True}, session=session)
            state = json.loads(checked["result"]["value"])
            layout = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = pipe.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": layout["width"], "height": layout["height"], "scale": 1},
            }, session=session, timeout=60)
            page = Page(
                images=len(state["images"]),
                broken_images=[name for name, ok in state["images"] if not ok],
                page_width=state["pageWidth"],
                window_width=state["windowWidth"],
                screenshot=base64.b64decode(shot["data"]),
            )
            for event in pipe.events:
                params = event.get("params", {})
                if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    page.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
                elif event.get("method") == "Runtime.exceptionThrown":
                    page.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
                    page.errors.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
            return page
        finally:
            pipe.close()
