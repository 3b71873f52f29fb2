"""Open a page in headless Chromium and say what a reader's browser would show.

Chromium is driven over the DevTools protocol (a websocket; ``websocket-client``), with a fresh
profile in a temporary folder and the page's own file URL. :func:`inspect_page` collects every
console error and uncaught exception, every request that leaves the machine (anything but
``file:``, ``data:``, ``blob:`` or ``about:``), how many figures rendered (plotly plots with
drawn SVG marks) and the page's tables, and optionally saves a screenshot at a given width.
:func:`find_chromium` locates the binary (``$CHROMIUM``, then ``chromium``,
``chromium-browser``, ``google-chrome``); Debian's package is ``chromium``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioattn.errors import BioattnError

__all__ = ["BrowserError", "PageReport", "find_chromium", "inspect_page"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LOCAL = ("file:", "data:", "blob:", "about:", "chrome-error:", "devtools:")

# What the page shows once loaded: figures with drawn marks, tables, text.
_PROBE = """(() => {
  const plots = Array.from(document.querySelectorAll(".js-plotly-plot"));
  const drawn = plots.filter(p => p.querySelector("svg.main-svg") &&
    p.querySelectorAll(".scatterlayer .trace path, .barlayer .trace path, .point").length > 0);
  return {
    figures: plots.length,
    drawn: drawn.length,
    empty: plots.filter(p => !drawn.includes(p)).map(p => p.id),
    tables: document.querySelectorAll("table.data").length,
    text: document.body.innerText,
  };
})()"""


class BrowserError(BioattnError):
    """Chromium could not be started or did not answer."""


@dataclass
class PageReport:
    """What the browser saw of one page."""

    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    figures: int = 0
    drawn: int = 0
    empty: list[str] = field(default_factory=list)
    tables: int = 0
    text: str = ""
    screenshot: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None: ``$CHROMIUM`` first, then the usual names."""
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).exists() else None)
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Session:
    def __init__(self, url: str, timeout: float) -> None:
        import websocket  # websocket-client (a dev dependency)

        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = self._receive(method)
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"Chromium refused {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def _receive(self, waiting_for: str) -> dict[str, Any]:
        import websocket

        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise BrowserError(
                f"Chromium did not answer {waiting_for} within {self.timeout:.0f} s"
            ) from None

    def wait_for(self, event: str, deadline: float) -> None:
        if any(e.get("method") == event for e in self.events):
            return
        while time.monotonic() < deadline:
            message = self._receive(event)
            self.events.append(message)
            if message.get("method") == event:
                return
        raise BrowserError(f"Chromium sent no {event} in time")

    def drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` (late console errors, renders)."""
        import websocket

        end = time.monotonic() + seconds
        self.ws.settimeout(0.1)
        try:
            while time.monotonic() < end:
                try:
                    self.events.append(json.loads(self.ws.recv()))
                except websocket.WebSocketTimeoutException:  # nothing more right now
                    continue
        finally:
            self.ws.settimeout(self.timeout)


def _page_target(port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            # no proxy: a CI machine's http_proxy would otherwise be asked for 127.0.0.1
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                targets = json.loads(r.read())
        except OSError:
            time.sleep(0.1)
            continue
        pages = [t for t in targets if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise BrowserError("Chromium opened no page to drive")


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            errors.append(str(exception.get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
    return errors


def inspect_page(
    page: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    height: int = 900,
    scripts: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    chromium: str | None = None,
) -> PageReport:
    """Load ``page`` (an HTML file) in headless Chromium and report what it showed.

    ``screenshot`` saves a PNG of the first screen (``width`` × ``height`` CSS pixels), taken
    right after load. ``scripts`` (name → JavaScript expression) run after that, in order, and
    their JSON values land in :attr:`PageReport.results` (e.g. click a heading, read the rows);
    console errors they cause are counted too. Raises :class:`BrowserError` when no Chromium is
    found or it does not answer within ``timeout`` seconds.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise BrowserError(
            "no Chromium found (looked for $CHROMIUM, " + ", ".join(_NAMES) + "); install "
            "Debian's package with `apt-get install chromium`"
        )
    url = Path(page).resolve().as_uri()
    started = time.monotonic()
    deadline = started + timeout
    with tempfile.TemporaryDirectory(prefix="bioattn-chromium-") as profile:
        command = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            while not port_file.exists() or not port_file.read_text().strip():
                if process.poll() is not None:
                    raise BrowserError(f"{binary} exited at start (status {process.returncode})")
                if time.monotonic() > deadline:
                    raise BrowserError(f"{binary} did not open its DevTools port in time")
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            session = _Session(_page_target(port, deadline), timeout)
            try:
                for domain in ("Runtime", "Log", "Page", "Network"):
                    session.call(f"{domain}.enable")
                session.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                session.events.clear()
                session.call("Page.navigate", url=url)
                session.wait_for("Page.loadEventFired", deadline)
                session.drain(0.5)  # plotly draws right after load; late errors arrive here
                result = session.call("Runtime.evaluate", expression=_PROBE, returnByValue=True)
                if "exceptionDetails" in result:
                    raise BrowserError(f"the page probe failed: {result['exceptionDetails']}")
                seen = result["result"]["value"]
                report = PageReport(
                    console_errors=_console_errors(session.events),
                    external_requests=sorted(
                        {
                            e["params"]["request"]["url"]
                            for e in session.events
                            if e.get("method") == "Network.requestWillBeSent"
                            and not e["params"]["request"]["url"].startswith(_LOCAL)
                        }
                    ),
                    figures=int(seen["figures"]),
                    drawn=int(seen["drawn"]),
                    empty=list(seen["empty"]),
                    tables=int(seen["tables"]),
                    text=str(seen["text"]),
                )
                if screenshot is not None:
                    shot = session.call("Page.captureScreenshot", format="png")
                    path = Path(screenshot)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(base64.b64decode(shot["data"]))
                    report.screenshot = path
                for name, expression in (scripts or {}).items():
                    answer = session.call(
                        "Runtime.evaluate", expression=expression, returnByValue=True
                    )
                    if "exceptionDetails" in answer:
                        details = answer["exceptionDetails"]
                        text = details.get("exception", {}).get("description", details)
                        report.console_errors.append(f"script {name}: {text}")
                        report.results[name] = None
                    else:
                        report.results[name] = answer["result"].get("value")
                if scripts:
                    session.drain(0.2)
                    report.console_errors = _console_errors(session.events) + [
                        e for e in report.console_errors if e.startswith("script ")
                    ]
                report.seconds = time.monotonic() - started
                return report
            finally:
                session.ws.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
