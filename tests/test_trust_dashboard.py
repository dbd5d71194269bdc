"""The Trust page through AppTest: the shipped demo run's cached scores, and a MURA-shaped run
that has none until the page computes them with the run's own checkpoint."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from test_dashboard import app, no_exception, synthetic_folders, texts
from test_explore_dashboard import make_mura_run

from nextray_core import runs
from nextray_core.run_trust import TRUST_FILE, read_run_trust

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
DEMO_RUN = DEMO_CHECKPOINT / "run"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py"])


def charts(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.mark.skipif(not (DEMO_RUN / TRUST_FILE).is_file(), reason="no demo trust scores here")
def test_the_demo_runs_scores_are_shown_per_region_beside_a_uniform_map():
    at = app("trust", DEMO_RUN, DEMO_CHECKPOINT)
    no_exception(at)
    trust = read_run_trust(DEMO_RUN)
    assert trust.summary["method"] in texts(at)
    figures = charts(at)
    assert [f["layout"]["title"]["text"] for f in figures] == [
        "Pointing game",
        "Energy inside the boxes",
        "Faithfulness",
    ]
    regions = list(trust.table("localisation").index)
    pointing = figures[0]["data"]
    assert pointing[0]["x"] == regions and pointing[1]["name"] == "uniform map"
    assert "did not score this run" not in texts(at)


def test_a_run_without_scores_gets_them_computed_and_saved(tmp_path):
    checkpoint = synthetic_folders()[0]
    run = make_mura_run(tmp_path, checkpoint)
    at = app("trust", run, checkpoint)
    no_exception(at)
    assert "nextray trust" in texts(at) and not charts(at)
    at.number_input(key="trust_per_region").set_value(1)
    at.button(key="trust_compute").click().run()
    no_exception(at)
    trust = read_run_trust(run)
    assert trust is not None and (run / TRUST_FILE).is_file()
    assert "No positive image of this run has ground-truth boxes" in texts(at)  # MURA: no boxes
    faith = trust.table("faithfulness")
    assert faith.loc["all", "images"] == runs.read_run(run).predictions["region"].nunique()
    assert [f["layout"]["title"]["text"] for f in charts(at)] == ["Faithfulness"]
    study = at.selectbox(key="trust_study").value
    at.button(key="trust_open").click().run()
    no_exception(at)
    assert at.selectbox(key="study_pick").value == study


def test_scores_from_another_checkpoint_are_flagged(tmp_path):
    checkpoint, run, _ = synthetic_folders()
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    at = app("trust", copy, checkpoint)
    at.number_input(key="trust_per_region").set_value(0)
    at.button(key="trust_compute").click().run()
    no_exception(at)
    summary = json.loads((copy / TRUST_FILE).read_text())
    assert summary["localisation"]["regions"]  # the mini FracAtlas has boxes
    summary["checkpoint"]["weights_sha256"] = "0" * 64
    (copy / TRUST_FILE).write_text(json.dumps(summary))
    at = app("trust", copy, checkpoint)
    no_exception(at)
    assert "did not score this run" in texts(at)
