"""The web view in a real browser, shared by tests/test_web_browser.py and
benchmarks/test_bench_web.py: Debian's headless chromium through selenium and Debian's
chromedriver (nothing downloaded), the pages' helpers, and the line latency probe.

selenium is imported only by :func:`chromium`, so that importing this module costs
nothing where the browser is missing (check :func:`browser_missing` first).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from webserver import Server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "browser-token-" + "y" * 24

#: Installed on an open task page: for every line ``T=<unix time> ...`` added to the
#: stdout pane, how long after that time it reached the DOM (ms), in ``window.lat``.
LATENCY_PROBE = """
    window.lat = [];
    new MutationObserver((muts) => { const now = Date.now();
      for (const m of muts) for (const n of m.addedNodes)
        for (const t of (n.textContent || '').matchAll(/T=(\\d+\\.\\d+)/g)) window.lat.push(now - parseFloat(t[1]) * 1000);
    }).observe(document.querySelector('#stdout pre'), {childList: true, subtree: true});"""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return "Debian's chromium and chromium-driver are not installed"
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium driven by chromedriver, in a fresh profile; quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="bgtask-chromium-")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    try:
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    d.set_page_load_timeout(20)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Servers:
    """``servers(app=None, port=0)`` starts an app (by default ``default()``) on a free
    loopback port, or on *port* again; :meth:`close` stops every one still running."""

    def __init__(self, default: Callable[[], Any]) -> None:
        self.default = default
        self.running: list[Server] = []

    def __call__(self, app: Any = None, port: int = 0) -> Server:
        srv = Server(app if app is not None else self.default(), port=port).__enter__()
        self.running.append(srv)
        return srv

    def close(self) -> None:
        while self.running:
            self.running.pop().__exit__()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "",
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(interval)


def log_text(driver: Any, which: str = "stdout") -> str:
    return str(driver.execute_script(f"return document.querySelector('#{which} pre').textContent"))


def log_shows(driver: Any, text: str, which: str = "stdout") -> bool:
    """Whether the pane shows *text* (asked in the page: no copy of the log comes back)."""
    return bool(driver.execute_script(
        f"const p = document.querySelector('#{which} pre'); return p !== null && p.textContent.includes(arguments[0])",
        text))


def open_task(driver: Any, srv: Server, pid: int, token: str = TOKEN) -> None:
    driver.get(f"{srv.url}/tasks/{pid}?token={token}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), what="the tail windows")


def probe_latency(driver: Any) -> None:
    """Start :data:`LATENCY_PROBE` on the open task page."""
    driver.execute_script(LATENCY_PROBE)


def latencies(driver: Any) -> list[float]:
    """The probe's latencies so far (ms), sorted."""
    return sorted(float(x) for x in driver.execute_script("return window.lat"))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (*q* in 0..1) of sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    k = math.ceil(round(q * len(sorted_values), 9)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]
