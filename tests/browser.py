"""A small Chrome DevTools Protocol client for browser tests, with no dependency beyond the standard library.

Chromium runs headless with ``--remote-debugging-pipe``: it reads CDP commands from file descriptor 3 and
writes replies and events to descriptor 4, each message one JSON text ended by a NUL byte, so no websocket
and no port are needed. Every wait has a deadline, and :meth:`Browser.close` (also on ``with`` exit) always
ends the process and removes its temporary profile.

    with Browser(find_chromium()) as browser:
        browser.navigate(Path("reports/demo.html").resolve().as_uri())
        assert browser.evaluate("document.title") == "..."
        browser.screenshot("page.png")
        assert not browser.errors

``errors`` collects console errors (``console.error``/``console.assert``), uncaught exceptions, browser log
entries at level error (e.g. an image that failed to load) and failed requests; ``requests`` lists every URL
the page asked for (from Network events).
"""

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--disable-dev-shm-usage", "--disable-breakpad", "--metrics-recording-only",
    "--mute-audio", "--hide-scrollbars", "--password-store=basic", "--use-mock-keychain",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
]


class BrowserUnavailable(RuntimeError):
    """No Chromium here and none could be installed; the message says why."""


class BrowserError(RuntimeError):
    """The browser replied with an error, closed its pipe, or a wait ran out."""


def find_chromium(install: bool = True, timeout: float = 900) -> str:
    """The path of a Chromium (or Chrome) executable: ``$CHROMIUM`` if set, else the first of ``NAMES`` on
    PATH; when none is found, ``install`` and running as root, ``apt-get install -y chromium`` first."""
    if os.environ.get("CHROMIUM"):
        found = shutil.which(os.environ["CHROMIUM"])
        if not found:
            raise BrowserUnavailable(f"$CHROMIUM={os.environ['CHROMIUM']!r} is not an executable")
        return found
    for name in NAMES:
        if shutil.which(name):
            return shutil.which(name)
    if not install:
        raise BrowserUnavailable(f"none of {', '.join(NAMES)} is on PATH")
    if not shutil.which("apt-get"):
        raise BrowserUnavailable("no Chromium on PATH and no apt-get to install it")
    if os.geteuid() != 0:
        raise BrowserUnavailable("no Chromium on PATH; install it (sudo apt-get install -y chromium) or set $CHROMIUM")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started, log = time.monotonic(), ""
    for command in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "chromium"]):
        if command[1] == "update" and shutil.which("chromium"):
            break
        left = timeout - (time.monotonic() - started)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            raise BrowserUnavailable(f"{' '.join(command)} took over {timeout:.0f} s") from None
        log = (done.stdout + done.stderr)[-2000:]
        if command[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("chromium")
    if not found:
        raise BrowserUnavailable(f"apt-get install -y chromium did not give a chromium on PATH:\n{log}")
    print(f"installed Chromium with apt-get in {time.monotonic() - started:.0f} s")
    return found


class Browser:
    """One headless Chromium and one page (tab) driven over the DevTools protocol."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900, timeout: float = 30):
        executable = executable or find_chromium()
        self.timeout = timeout
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._next_id, self._buffer, self._events = 0, b"", []
        self._profile = tempfile.mkdtemp(prefix="bench-chromium-")
        self._log = open(Path(self._profile).parent / (Path(self._profile).name + ".log"), "w+b")
        # Our ends (commands we write, replies we read) and the browser's ends, the latter above fd 10 so that
        # moving them onto 3 and 4 in the child cannot clobber one another.
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def onto_3_and_4():  # in the child between fork and exec: dup2 makes 3 and 4 inheritable, and
            os.dup2(child_r, 3)  # close_fds=False keeps them (every other fd Python opened is close-on-exec)
            os.dup2(child_w, 4)

        command = [executable, *FLAGS, f"--user-data-dir={self._profile}",
                   f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                            close_fds=False, preexec_fn=onto_3_and_4, start_new_session=True)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(child_r)
            os.close(child_w)
        try:
            self.session = self._attach(width, height)
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float | None = None):
        """Send one command (to the page's session unless ``session`` is False) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and getattr(self, "session", None):
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline, f"the reply to {method}")
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
                return reply.get("result", {})
            self._event(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """The params of the next event named ``method`` (events seen before are consumed first)."""
        for k, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(k).get("params", {})
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            message = self._read(deadline, f"the event {method}")
            if "id" not in message:
                self._event(message)
                if message["method"] == method:
                    self._events.remove(message)
                    return message.get("params", {})

    def _read(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"timed out waiting for {what}")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise BrowserError(f"the browser closed its pipe while we waited for {what}:\n{self.log_tail()}")
                self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(text)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {description} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"request failed: {params.get('errorText')} ({params.get('requestId')})")
        self._events.append(message)
        del self._events[:-200]  # only recent events are kept for wait_event

    def _attach(self, width: int, height: int) -> str:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        pages = [t for t in targets if t.get("type") == "page"]
        target = pages[0]["targetId"] if pages else self.send(
            "Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.size = (width, height)
        return self.session

    # -- page -------------------------------------------------------------------------------------------------

    def navigate(self, url: str, timeout: float | None = None) -> None:
        """Load ``url`` and wait for its load event; clears ``errors`` and ``requests`` first."""
        self.errors.clear()
        self.requests.clear()
        self._events.clear()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigate {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str, timeout: float | None = None):
        """The value of a JavaScript expression in the page (promises are awaited); page errors raise."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True, "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"evaluate: {details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None, interval: float = 0.05):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(interval)

    def center(self, selector: str) -> tuple[float, float]:
        """Scroll the first element matching ``selector`` into view; its centre in viewport pixels."""
        box = self.evaluate(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: "center", inline: "center"}});
            const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        return box[0], box[1]

    def hover(self, selector: str) -> None:
        """A real mouse move onto the element (mouseenter/mousemove fire)."""
        x, y = self.center(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, selector: str) -> None:
        """A real left click at the element's centre."""
        x, y = self.center(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type_text(self, selector: str, text: str, clear: bool = True) -> None:
        """Focus the field and type ``text`` as the keyboard would (input events fire)."""
        self.click(selector)
        if clear:  # select the old text: typing replaces it, Backspace deletes it
            self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        if text:
            self.send("Input.insertText", {"text": text})
        elif clear:
            for kind in ("rawKeyDown", "keyUp"):
                self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Backspace", "code": "Backspace",
                                                     "windowsVirtualKeyCode": 8})

    def screenshot(self, path, full_page: bool = True, settle: float = 10) -> Path:
        """A PNG of the page (the whole page when ``full_page``: lazy images below the fold are loaded first)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = self.size
        if full_page:
            height = int(min(self.evaluate("document.documentElement.scrollHeight"), 16000))
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            self.evaluate(f"""new Promise((done) => {{
                const left = () => [...document.images].filter((i) => !i.complete && i.checkVisibility()).length;
                const start = performance.now();
                (function poll() {{ left() && performance.now() - start < {settle * 1000} ? setTimeout(poll, 50)
                    : requestAnimationFrame(() => requestAnimationFrame(done)); }})();
            }})""", timeout=settle + self.timeout)
        try:
            shot = self.send("Page.captureScreenshot", {"format": "png"}, timeout=max(self.timeout, 60))
        finally:
            if full_page:
                self.send("Emulation.setDeviceMetricsOverride",
                          {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    # -- end --------------------------------------------------------------------------------------------------

    def log_tail(self, chars: int = 3000) -> str:
        try:
            self._log.flush()
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                self.send("Browser.close", session=False, timeout=5)
            except (BrowserError, OSError, ValueError):
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the zygote and renderers go too
                process.wait(timeout=10)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # helpers left behind by a browser that exited
            except (ProcessLookupError, PermissionError):
                pass
        for fd in (getattr(self, "_r", None), getattr(self, "_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = None
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
