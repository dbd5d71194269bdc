"""The shipped demo: checkpoints/demo (FracAtlas ResNet-152) and its test-split run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nextray_core.checkpoint import load_checkpoint, verify_checkpoint
from nextray_core.engine import LIMITS, load_engine
from nextray_core.predict import predict_index
from nextray_core.runs import read_run

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "checkpoints" / "demo"
RUN = DEMO / "run"
MAX_FILE_BYTES = 50 * 1000 * 1000


def test_every_shipped_file_is_under_50_mb_and_the_checkpoint_verifies():
    files = [p for p in (REPO / "checkpoints").rglob("*") if p.is_file()]
    assert files, "checkpoints/ ships nothing"
    too_big = [p for p in files if p.stat().st_size > MAX_FILE_BYTES]
    assert not too_big
    card = verify_checkpoint(DEMO)
    assert "FracAtlas" in card.task and "not" in card.task.lower()
    assert card.weights_dtype == "float16" and len(card.weights_shards) >= 2


def test_card_reports_test_auc_with_intervals_per_body_part():
    card = verify_checkpoint(DEMO)
    table = card.metrics["test (image level)"]
    overall = table["overall"]
    assert overall["auc_low"] < overall["auc"] < overall["auc_high"]
    assert {"hand", "leg"} <= set(table)
    assert all(row["auc_low"] <= row["auc"] <= row["auc_high"] for row in table.values()
               if row["auc"] is not None)  # fmt: skip
    assert card.training["tried"], "the card must say what was tried"


def test_demo_run_carries_its_images_with_the_attribution():
    run = read_run(RUN)
    assert len(run.predictions) == 602 and int(run.predictions["label"].sum()) == 108
    # the card quotes the run: the same test metrics, not a copy that could drift
    card_overall = verify_checkpoint(DEMO).metrics["test (image level)"]["overall"]
    assert card_overall == run.metrics["image"]["overall"]
    assert all(Path(p).is_file() for p in run.predictions["image_path"])
    assert all(str(p).startswith(str(RUN)) for p in run.predictions["image_path"])
    assert "CC BY 4.0" in (RUN / "images" / "README.md").read_text()
    for name in ("localisation.md", "localisation.json", "ood.json", "report.md"):
        assert (RUN / name).is_file(), name


@pytest.fixture(scope="module")
def few_test_images():
    """Four fractured and four intact test images of the shipped run."""
    rows = read_run(RUN).predictions
    return pd_concat([rows[rows["label"] == 1].head(4), rows[rows["label"] == 0].head(4)])


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames).reset_index(drop=True)


def test_reevaluating_test_images_gets_the_runs_probabilities_back(few_test_images):
    model, card, _ = load_checkpoint(DEMO)
    again = predict_index([(model, card)], few_test_images.drop(columns=["probability"]))
    np.testing.assert_allclose(
        again["probability"], few_test_images["probability"], rtol=0, atol=1e-4
    )


def test_the_engines_fast_path_answers_like_the_run(few_test_images, tmp_path):
    from nextray_core.engine.backends import cpu_supports_bf16

    engine = load_engine(DEMO, cache_dir=tmp_path)
    if cpu_supports_bf16():  # else fp32 would answer and this would compare fp32 with itself
        assert engine.backend_name == "torch-mixed", engine.describe()
    again = predict_index([(engine, engine.card)], few_test_images.drop(columns=["probability"]))
    change = np.abs(again["probability"] - few_test_images["probability"]).max()
    assert change <= LIMITS["probability"], engine.describe()


def test_predicting_a_few_images_answers_in_fp32_with_the_runs_probabilities(
    few_test_images, capsys
):
    from nextray_core.cli import main

    paths = few_test_images["image_path"].head(2).tolist()
    assert main(["predict", *paths, "--checkpoint", str(DEMO)]) == 0
    out, err = capsys.readouterr()
    # a compiled fast path costs seconds to load and saves milliseconds an image: not for two
    assert "torch-fp32 (auto, 2 image(s)" in err
    for probability in few_test_images["probability"].head(2):
        assert f"{probability:.3f}" in out


@pytest.mark.parametrize("page", ["metrics", "errors", "teaching", "model"])
def test_dashboard_opens_on_the_demo_out_of_the_box(page, monkeypatch):
    import sys

    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(str(m.value) for m in (*at.markdown, *at.info, *at.warning, *at.caption))
    assert "No model yet" not in shown and "No run yet" not in shown
    assert at.sidebar.slider[0].value == pytest.approx(verify_checkpoint(DEMO).default_threshold)
    assert at.sidebar.slider[0].label.startswith("Threshold: fractured if")
    if page == "teaching":  # FracAtlas has fractures, not MURA's "abnormal"
        headings = [h.value for h in at.subheader]
        assert any(h.startswith("Not fractured (") for h in headings), headings
        assert any(h.startswith("Fractured (") for h in headings), headings
