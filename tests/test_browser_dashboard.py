"""The dashboard in a real browser: `nextray dashboard` on localhost, driven by Debian's chromium.

Needs /usr/bin/chromium (`apt-get install -y --no-install-recommends chromium`, see
scripts/install_browser.sh); Playwright only drives it and never downloads a browser. Also
saves a screenshot of every page to $NEXTRAY_SHOTS (default /tmp/nextray_shots).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_dashboard import FRACATLAS_MINI, synthetic_folders

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
WAIT_MS = 90_000

pytestmark = [
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


@pytest.fixture(scope="module")
def synthetic_checkpoint() -> Path:
    return synthetic_folders()[0]


@pytest.fixture(scope="module")
def synthetic_run() -> Path:
    return synthetic_folders()[1]


@pytest.fixture(scope="module")
def dashboard_url(synthetic_checkpoint, synthetic_run):
    """`nextray dashboard --run R --checkpoint C --port P` on the synthetic run, on localhost."""
    checkpoint, run = synthetic_checkpoint, synthetic_run
    port = free_port()
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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


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


def metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label).first
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def set_threshold(page, key: str) -> float:
    slider = page.get_by_test_id("stSidebar").locator("input[type=range]")
    slider.focus()
    page.keyboard.press(key)
    settle(page)
    return float(slider.input_value())


def test_upload_predict_and_move_the_threshold_in_a_real_browser(browser, dashboard_url):
    page = open_page(browser, dashboard_url, height=1400)
    image = sorted((FRACATLAS_MINI / "images" / "Fractured").glob("*.jpg"))[0]
    page.locator("input[type=file]").set_input_files(str(image))
    page.get_by_text("Study probability (mean of views)").wait_for()
    settle(page)
    probability = float(metric_value(page, "Probability abnormal"))
    assert 0.0 < probability < 1.0
    assert page.get_by_test_id("stImage").count() == 2  # the radiograph and its map
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "predict.png"), full_page=True)

    assert set_threshold(page, "Home") == 0.0
    assert metric_value(page, "Verdict") == "abnormal"
    assert set_threshold(page, "End") == 1.0
    assert metric_value(page, "Verdict") == "normal"
    page.close()


def test_a_click_on_the_roc_curve_sets_the_threshold(browser, dashboard_url, synthetic_run):
    from nextray_core import curves, runs

    rows = runs.read_run(synthetic_run).predictions
    labels, scores = rows["label"].to_numpy(), rows["probability"].to_numpy()
    roc = curves.roc_points(labels, scores)
    current = (scores >= 0.5).astype(int)  # the operating point's star sits on this ROC point
    star = (current[labels == 0].mean(), current[labels == 1].mean())
    target = next(
        i
        for i in range(1, len(roc))
        if (roc["fpr"][i], roc["tpr"][i]) != pytest.approx(star) and roc["threshold"][i] < 1
    )
    page = open_page(browser, f"{dashboard_url}/metrics", height=1400)
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    settle(page)
    points = chart.locator("g.trace.scatter").nth(1).locator("path.point")  # the run's ROC
    assert points.count() == len(roc)
    points.nth(target).click(force=True)
    settle(page)
    slider = page.get_by_test_id("stSidebar").locator("input[type=range]")
    assert float(slider.input_value()) == pytest.approx(roc["threshold"][target], abs=1e-3)
    page.get_by_text(f"Current threshold {roc['threshold'][target]:.3f}").wait_for()
    page.close()


@pytest.mark.parametrize("name", ["metrics", "errors", "teaching", "model"])
def test_every_page_renders_in_a_real_browser(browser, dashboard_url, name):
    heights = {"metrics": 4600, "errors": 1200, "teaching": 2200, "model": 2000}
    page = open_page(browser, f"{dashboard_url}/{name}", height=heights[name])
    page.get_by_test_id("stHeading").first.wait_for()
    settle(page)
    if name == "metrics":
        page.locator(".js-plotly-plot").first.wait_for()
        settle(page)
    elif name in ("errors", "teaching"):
        page.get_by_test_id("stImage").first.wait_for()
    if name == "errors":  # open the most confident error: every view of its study appears
        page.get_by_role("button", name="Open study").first.click()
        page.get_by_role("button", name="Close").wait_for()
        settle(page)
    assert page.get_by_test_id("stException").count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if name == "teaching":  # the quiz: answer, then label, probability and map are revealed
        page.get_by_text("Quiz", exact=True).click()
        page.get_by_role("button", name="Abnormal", exact=True).wait_for()
        settle(page)
        page.get_by_role("button", name="Abnormal", exact=True).click()
        page.get_by_role("button", name="Next case").wait_for()
        settle(page)
        assert page.get_by_text("this case is").count() == 1
        page.screenshot(path=str(SHOTS / "teaching_quiz.png"), full_page=True)
    page.close()
