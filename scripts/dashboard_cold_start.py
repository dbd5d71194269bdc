"""Measure the dashboard's cold start: seconds from `nextray dashboard` to the first answer.

    python scripts/dashboard_cold_start.py [--checkpoint checkpoints/demo] [--image FILE]
        [--cache-dir DIR] [--empty-cache] [--screenshot out.png]

Starts the server on a free port, opens the Predict page in Debian's chromium (Playwright),
uploads one radiograph and waits for its probability. Prints the time to "server healthy",
to "page ready" (model loaded, uploader shown) and to "first probability shown". With
--empty-cache the engine's cache (``NEXTRAY_CACHE``) starts empty, as on a fresh machine;
without it, a second start reuses the compiled code and guard verdicts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the dashboard exited early:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"no answer from {url} within {limit} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo")
    parser.add_argument(
        "--image",
        type=Path,
        default=next((REPO / "checkpoints" / "demo" / "run" / "images").rglob("*.jpg"), None),
    )
    parser.add_argument("--cache-dir", type=Path, help="NEXTRAY_CACHE for the server")
    parser.add_argument("--empty-cache", action="store_true", help="start with an empty cache")
    parser.add_argument("--screenshot", type=Path, help="save the page after the answer")
    args = parser.parse_args()
    if args.image is None or not args.image.is_file():
        sys.exit("give --image FILE (a radiograph to upload)")

    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    cache = args.cache_dir or (Path(tempfile.mkdtemp()) if args.empty_cache else None)
    if cache is not None:
        if args.empty_cache and cache.exists():
            shutil.rmtree(cache)
        env["NEXTRAY_CACHE"] = str(cache)
    port = free_port()
    url = f"http://localhost:{port}"
    command = [sys.executable, "-m", "nextray_core.cli", "dashboard", "--port", str(port)]
    command += ["--checkpoint", str(args.checkpoint)]
    started = time.monotonic()
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(url, server)
        healthy = time.monotonic() - started
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(url)
            page.locator("input[type=file]").wait_for(state="attached")
            ready = time.monotonic() - started
            page.locator("input[type=file]").set_input_files(str(args.image))
            page.get_by_test_id("stMetricValue").first.wait_for()
            answered = time.monotonic() - started
            if args.screenshot:
                page.wait_for_timeout(1500)
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
    print(f"server healthy after {healthy:.1f} s")
    print(f"Predict page ready (model loaded) after {ready:.1f} s")
    print(f"first probability shown after {answered:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
