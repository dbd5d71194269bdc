"""The run map in a real browser: lasso the points, see their studies, open one in the viewer.

Like tests/test_browser_dashboard.py: Debian's chromium driven by Playwright
(tests/browser_support.py), skipped without it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from browser_support import BROWSER_MARKS, SHOTS, open_page, serve_dashboard, settle
from test_dashboard import synthetic_folders

from nextray_core import runs
from nextray_core.run_map import fit_projection, write_features

PORT = 8641  # this suite's port for a dashboard it starts itself ($NEXTRAY_BROWSER_PORT wins)

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """(checkpoint, a copy of the synthetic run with features.npz)."""
    checkpoint, run, _ = synthetic_folders()
    copy = tmp_path_factory.mktemp("browser-map") / "run"
    shutil.copytree(run, copy)
    n = len(runs.read_run(copy).predictions)
    write_features(copy, fit_projection(np.random.default_rng(0).normal(size=(n, 12)), dims=4))
    return checkpoint, copy


@pytest.fixture(scope="module")
def url(mapped):
    checkpoint, run = mapped
    with serve_dashboard(run, checkpoint, PORT) as address:
        yield address


def test_lasso_on_the_run_map_lists_studies_and_opens_one(browser, url, mapped):
    page = open_page(browser, f"{url}/run_map", height=1600)
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for()
    settle(page)
    box = chart.locator(".nsewdrag").first.bounding_box()
    left, top = box["x"] + 2, box["y"] + 2
    right, bottom = box["x"] + box["width"] - 2, box["y"] + box["height"] - 2
    page.mouse.move(left, top)
    page.mouse.down()
    for x, y in ((right, top), (right, bottom), (left, bottom), (left, top + 4)):
        page.mouse.move(x, y, steps=12)
    page.mouse.up()
    page.get_by_text("studies selected").wait_for()
    settle(page)
    n_studies = runs.read_run(mapped[1]).predictions["study_id"].nunique()
    heading = page.get_by_text("studies selected").inner_text()
    assert heading.startswith(f"{n_studies} studies")  # the lasso went round every point
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "run_map.png"), full_page=True)
    study = sorted(runs.read_run(mapped[1]).predictions["study_id"].unique())[0]
    page.get_by_role("button", name=f"Open {study}", exact=False).first.click()
    page.get_by_text("Window centre").wait_for()  # a label only the Study viewer has
    settle(page)
    assert f"study={study}" in page.url, page.url
    page.screenshot(path=str(SHOTS / "study_viewer.png"), full_page=True)
    page.close()
