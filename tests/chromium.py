"""Headless Chromium driven over the DevTools protocol, for the tests of the pages (the reward service's debug view,
the traces viewer)."""

import base64
import fcntl
import json
import os
import select
import subprocess
import time


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on its fd 3,
    replies and events on its fd 4, NUL-terminated JSON): no port to race for, no websocket client to install."""

    def __init__(self, binary: str, profile: str):
        child_in, self._commands = os.pipe()
        self._replies, child_out = os.pipe()

        def at_3_and_4() -> None:  # in the child before exec; high copies first, as the pipes may already be 3 or 4
            high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (child_in, child_out))
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        flags = ["--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"]
        self.process = subprocess.Popen(
            [binary, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,900"],
            preexec_fn=at_3_and_4,
            close_fds=False,  # would close 3 and 4 after at_3_and_4; Python's own fds are not inherited (PEP 446)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._id, self.events, self.session = b"", 0, [], None

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, timeout_s: float = 10.0, **params) -> dict:
        self._id += 1
        command = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            command["sessionId"] = self.session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while (message := self._receive(deadline)).get("id") != self._id:
            self.events.append(message)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message["result"]

    def open(self, url: str, timeout_s: float = 10.0) -> None:
        """`url` in a new tab, once its load event fired (events of pages opened before stay in `events`)."""
        seen = len(self.events)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")  # from here on, uncaught page errors arrive as Runtime.exceptionThrown events
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while not any(event.get("method") == "Page.loadEventFired" for event in self.events[seen:]):
            self.events.append(self._receive(deadline))

    def evaluate(self, expression: str):
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element, as laid out (hidden or covered, it would miss)."""
        x, y = self.evaluate(
            f"(r => [r.x + r.width / 2, r.y + r.height / 2])(document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect())"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never made this true: {expression}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5.0)
        except (OSError, RuntimeError, TimeoutError):
            pass  # already gone: killed below if it is not
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)

    def screenshot(self, path) -> None:
        """The page as laid out in the window, to a PNG at `path`."""
        png = self.send("Page.captureScreenshot", timeout_s=30.0, format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as out:
            out.write(base64.b64decode(png))
