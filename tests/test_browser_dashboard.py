"""The dashboard in a real browser: `nextray dashboard` on localhost, driven by Debian's chromium.

Needs /usr/bin/chromium (see tests/browser_support.py, which holds what the browser tests share).
Also saves a screenshot of every page to $NEXTRAY_SHOTS (default /tmp/nextray_shots).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, SHOTS, open_page, serve_dashboard, settle
from test_dashboard import FRACATLAS_MINI, synthetic_folders

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def synthetic_checkpoint() -> Path:
    return synthetic_folders()[0]


@pytest.fixture(scope="module")
def synthetic_run() -> Path:
    return synthetic_folders()[1]


@pytest.fixture(scope="module")
def dashboard_url(synthetic_checkpoint, synthetic_run):
    """`nextray dashboard --run R --checkpoint C --port P` on the synthetic run, on localhost."""
    with serve_dashboard(synthetic_run, synthetic_checkpoint) as url:
        yield url


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
    if name == "teaching":  # the quiz, answered with its keys: label, probability and map show
        page.get_by_text("Quiz", exact=True).click()
        answer = page.get_by_role("button", name="Abnormal")  # its name carries the key too
        answer.wait_for()
        settle(page)
        page.get_by_test_id("stHeading").first.click()  # focus off the radio: keys reach the page
        page.keyboard.press("2")
        page.get_by_role("button", name="Next case").wait_for()
        settle(page)
        assert page.get_by_text("this case is").count() == 1
        assert page.get_by_text("Review missed cases").count() == 1
        page.screenshot(path=str(SHOTS / "teaching_quiz.png"), full_page=True)
        page.keyboard.press("Enter")  # the next case: hidden again
        answer.wait_for()
        settle(page)
        assert page.get_by_text("this case is").count() == 0
    page.close()
