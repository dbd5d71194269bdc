"""What the real-browser tests share: Debian's chromium driven by Playwright, a dashboard served
on localhost for the test, and waiting for Streamlit to settle.

Needs /usr/bin/chromium (`apt-get install -y --no-install-recommends chromium`, see
scripts/install_browser.sh); Playwright only drives it and never downloads a browser. The
``browser`` fixture itself is in conftest.py (one chromium per test session).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("NEXTRAY_SHOTS", "/tmp/nextray_shots"))
STARTUP_SECONDS = 90
PORT_ENV = "NEXTRAY_BROWSER_PORT"  # set it to serve every test dashboard on that one port
WAIT_MS = 90_000

# every browser test module: pytestmark = BROWSER_MARKS
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason="/usr/bin/chromium is absent: apt-get install -y --no-install-recommends chromium",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the dashboard exited early:\n{server.stdout.read()}")
        try:
            # urlopen is blocked in tests (no network); the health check is localhost only
            with urllib.request.build_opener().open(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the dashboard did not answer on {url} within {STARTUP_SECONDS} s")


def stop_process_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the CLI and its streamlit child), then SIGKILL
    whatever is left: streamlit does not always exit on SIGTERM."""
    for sig, seconds in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            server.poll()  # reap the CLI so that only live members keep the group
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextlib.contextmanager
def serve_dashboard(run: Path, checkpoint: Path, port: int | None = None) -> Iterator[str]:
    """`nextray dashboard --run R --checkpoint C --port P` on localhost: yields its URL, stops
    it (and its children) afterwards. The port: $NEXTRAY_BROWSER_PORT, else ``port``, else a
    free one."""
    port = int(os.environ.get(PORT_ENV) or 0) or port or free_port()
    command = [sys.executable, "-m", "nextray_core.cli", "dashboard", "--port", str(port)]
    command += ["--run", str(run), "--checkpoint", str(checkpoint)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: stopped below with its children
    )
    url = f"http://localhost:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        stop_process_group(server)


def open_page(browser, url: str, height: int = 1000):
    page = browser.new_page(viewport={"width": 1440, "height": height})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.get_by_test_id("stSidebar").wait_for()
    return page


_BUSY = """() =>
    !!document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSkeleton"]')
    || !Array.from(document.images).every((image) => image.complete)"""


def settle(page, quiet_ms: int = 1200) -> None:
    """Wait until Streamlit is idle (no run in progress, no placeholders, images loaded) for
    ``quiet_ms`` in a row: a rerun can start a moment after the event that causes it."""
    deadline, quiet = time.monotonic() + WAIT_MS / 1000, 0
    while quiet < quiet_ms:
        if time.monotonic() > deadline:
            raise TimeoutError("the dashboard stayed busy")
        quiet = 0 if page.evaluate(_BUSY) else quiet + 200
        page.wait_for_timeout(200)
