"""The exploring views (Label review, Study viewer, ...) through AppTest, on the shipped demo run
with its checkpoint and on a synthetic MURA-shaped run scored by the synthetic test checkpoint."""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_dashboard import app, no_exception, synthetic_folders, texts

from nextray_core import runs
from nextray_core.checkpoint import read_card
from nextray_core.datasets import load_dataset
from nextray_core.datasets.synthetic import make_synthetic_mura
from nextray_core.label_errors import marks_csv, rank_label_errors
from nextray_core.run_map import fit_projection, map_frame, read_features, write_features

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
DEMO_RUN = DEMO_CHECKPOINT / "run"
VIEWS = ("label_review", "study", "run_map", "trust", "report")
needs_demo = pytest.mark.skipif(not runs.is_run(DEMO_RUN), reason="the demo run is not here")


def make_mura_run(
    root: Path,
    checkpoint: Path,
    *,
    patients_valid: int = 10,
    seed: int = 2,
    relabel: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> Path:
    """A run over a synthetic MURA valid split: multi-view studies, seven-region names.
    ``relabel`` replaces the labels (rows -> new label column) before the probabilities."""
    data = make_synthetic_mura(root / "data", patients_train=2, patients_valid=patients_valid,
                               seed=seed)  # fmt: skip
    index = load_dataset("mura", data)
    rows = index[index["split"].isin(["val", "test"])].reset_index(drop=True)
    if relabel is not None:
        rows["label"] = relabel(rows)
    rng = np.random.default_rng(0)
    rows["probability"] = np.clip(0.3 + 0.4 * rows["label"] + rng.normal(0, 0.2, len(rows)), 0, 1)
    meta = runs.build_meta(
        checkpoints=[(checkpoint, read_card(checkpoint))],
        predictions=rows,
        dataset_kind="mura",
        data_root=data,
        split="valid",
        combine="mean",
        default_threshold=0.5,
        batch_size=8,
    )
    run = runs.write_run(root / "run", rows, meta)
    # features that separate the labels, as a trained model's would
    features = rng.normal(size=(len(rows), 16)) + 3.0 * rows["label"].to_numpy()[:, None]
    write_features(run, fit_projection(features, dims=8, ood_distance=rng.random(len(rows))))
    return run


def points(values) -> int:
    """How many values a plotly trace holds (plotly 6 sends arrays as typed base64)."""
    if isinstance(values, dict):
        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


@pytest.fixture(scope="module")
def mura(tmp_path_factory):
    """(checkpoint, MURA-shaped run)."""
    checkpoint = synthetic_folders()[0]
    return checkpoint, make_mura_run(tmp_path_factory.mktemp("mura"), checkpoint)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py"])


@needs_demo
@pytest.mark.parametrize("view", VIEWS)
def test_views_render_on_the_demo_run(view):
    at = app(view, DEMO_RUN, DEMO_CHECKPOINT)
    no_exception(at)
    assert "No run yet" not in texts(at)


@pytest.mark.parametrize("view", VIEWS)
def test_views_render_on_a_mura_shaped_run(view, mura):
    at = app(view, mura[1], mura[0])
    no_exception(at)
    assert "No run yet" not in texts(at)


def test_label_review_lists_the_cores_ranking_and_keeps_marks_apart(mura):
    checkpoint, run = mura
    at = app("label_review", run, checkpoint, lr_flagged=False)
    no_exception(at)
    ranked = rank_label_errors(runs.read_run(run).predictions)
    shown = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(shown) == 5
    for line, study in zip(shown, ranked["study_id"].head(5), strict=True):
        assert study in line
    first = ranked["study_id"].iloc[0]
    at.radio(key=f"lr_mark_{first}").set_value("label looks wrong").run()
    no_exception(at)
    assert at.session_state["label_marks"] == {first: "label looks wrong"}
    before = sorted(p.name for p in run.iterdir())
    # importing a marks file adds its marks; the run folder is never written to
    second = ranked["study_id"].iloc[1]
    text = marks_csv({second: "model wrong"}, {second: "cast"})
    at.file_uploader(key="lr_upload").set_value(("marks.csv", text.encode(), "text/csv")).run()
    no_exception(at)
    assert at.session_state["label_marks"] == {first: "label looks wrong", second: "model wrong"}
    assert at.radio(key=f"lr_mark_{second}").value == "model wrong"
    assert sorted(p.name for p in run.iterdir()) == before
    bad = ("bad.csv", b"study_id,mark\nx,perhaps\n", "text/csv")
    at.file_uploader(key="lr_upload").set_value(bad).run()
    assert any("unknown mark" in e.value for e in at.error)


def test_open_study_switches_to_the_viewer_with_every_view(mura):
    checkpoint, run = mura
    at = app("label_review", run, checkpoint, lr_flagged=False)
    predictions = runs.read_run(run).predictions
    ranked = rank_label_errors(predictions)
    first = ranked["study_id"].iloc[0]
    at.button(key=f"lr_open_{first}").click().run()
    no_exception(at)
    assert at.session_state["study_open"] == first
    assert at.selectbox(key="study_pick").value == first
    views = predictions[predictions["study_id"] == first]
    assert "Study viewer" in at.title[0].value
    assert len(at.image) == len(views)
    captions = [c for image in at.image for c in image.captions]
    expected = [f"p = {p:.3f}" for p in views["probability"]]
    assert [c.split(" · ")[0] for c in captions] == expected


def test_study_viewer_draws_fracatlas_boxes_and_applies_the_window(tmp_path):
    checkpoint, run, _ = synthetic_folders()
    from nextray_core.datasets.fracatlas import load_fracture_boxes

    boxes = load_fracture_boxes(REPO / "tests" / "data" / "fracatlas_mini")
    predictions = runs.read_run(run).predictions
    boxed = predictions[
        predictions["image_path"].map(lambda p: Path(p).name).isin(boxes["image_id"])
    ]
    study = boxed["study_id"].iloc[0]
    at = app("study", run, checkpoint, study_open=study, study_map=False)
    no_exception(at)
    captions = [c for image in at.image for c in image.captions]
    assert any("box(es)" in c for c in captions), captions
    assert any("Boxes:" in str(c.value) for c in at.caption)


def test_run_map_draws_every_image_and_selected_points_open_their_studies(mura):
    checkpoint, run = mura
    at = app("run_map", run, checkpoint)
    no_exception(at)
    predictions = runs.read_run(run).predictions
    chart = at.get("plotly_chart")[0]
    import json

    figure = json.loads(chart.proto.spec)
    drawn = sum(points(trace["x"]) for trace in figure["data"])
    assert drawn == len(predictions)
    assert f"{len(predictions):,} of {len(predictions):,} images drawn" in texts(at)
    expected = map_frame(predictions, read_features(run), 0.5)
    by_outcome = {t["name"]: points(t["x"]) for t in figure["data"]}
    assert by_outcome == expected["outcome"].value_counts().to_dict()
    # a selection (what the chart's lasso sends) lists the studies of the chosen images
    rows = [0, 1, len(predictions) - 1]
    at.session_state["map_selected"] = rows
    at.run()
    no_exception(at)
    studies = predictions.iloc[rows]["study_id"].unique()
    assert f"{len(studies)} studies selected" in [h.value for h in at.subheader]
    at.button(key=f"map_open_{studies[0]}").click().run()
    no_exception(at)
    assert at.selectbox(key="study_pick").value == studies[0]


def test_run_map_without_features_says_how_to_get_them(tmp_path, mura):
    checkpoint, run = mura
    bare = tmp_path / "bare"
    import shutil

    shutil.copytree(run, bare)
    (bare / "features.npz").unlink()
    at = app("run_map", bare, checkpoint)
    no_exception(at)
    assert "nextray run-features" in texts(at)
    at.toggle(key="map_compute").set_value(True).run()
    no_exception(at)
    assert len(at.get("plotly_chart")) == 1
    assert not (bare / "features.npz").exists()  # computed for the session, not written


def test_report_view_offers_png_figures_and_the_html_report(mura):
    checkpoint, run = mura
    at = app("report", run, checkpoint, rep_cases=0)
    no_exception(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert sorted(label for label in labels if label.endswith(".png")) == [
        "Download calibration.png",
        "Download confusion.png",
        "Download roc-image.png",
        "Download roc-study.png",
    ]
    at.toggle(key="rep_build").set_value(True).run()
    no_exception(at)
    assert any(b.proto.label.startswith("Download the report") for b in at.get("download_button"))


def test_the_errors_page_opens_a_study_in_the_viewer(mura):
    checkpoint, run = mura
    predictions = runs.read_run(run).predictions
    study = predictions["study_id"].iloc[0]
    at = app("errors", run, checkpoint, errors_open=study)
    no_exception(at)
    at.button(key="errors_viewer").click().run()
    no_exception(at)
    assert at.selectbox(key="study_pick").value == study


@needs_demo
def test_the_study_viewer_opens_with_the_cards_map_method_and_the_runs_class_names():
    at = app("study", DEMO_RUN, DEMO_CHECKPOINT)
    no_exception(at)
    method = read_card(DEMO_CHECKPOINT).extra["map_method"]
    assert at.selectbox(key="study_method").value == method
    captions = [c for image in at.image for c in image.captions]
    assert captions and all(f"{method}, evidence for fractured" in c for c in captions)
