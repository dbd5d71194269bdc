"""Metrics, bootstrap, curves, presets and calibration against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from nextray_core import curves
from nextray_core.errors import DatasetError
from nextray_core.metrics import (
    METRICS,
    cluster_weights,
    metric_table,
    point_metrics,
    table_from_dict,
    table_to_dict,
    weighted_metrics,
)
from nextray_core.predict import study_table
from nextray_core.report import render_report
from nextray_core.runs import scorer_csv

# Seven studies, eleven images. Study probabilities (mean of views): W1 0.8, W2 0.4, W3 0.3,
# W4 0.6, H1 0.8, H2 0.2, H3 0.55.
STUDIES = {
    # study_id: (region, label, view probabilities)
    "valid/XR_WRIST/patient11185/study1_positive": ("wrist", 1, [0.9, 0.7]),
    "valid/XR_WRIST/patient11186/study1_positive": ("wrist", 1, [0.4]),
    "valid/XR_WRIST/patient11187/study1_negative": ("wrist", 0, [0.2, 0.4]),
    "valid/XR_WRIST/patient11188/study1_negative": ("wrist", 0, [0.6]),
    "valid/XR_HAND/patient11189/study1_positive": ("hand", 1, [0.8]),
    "valid/XR_HAND/patient11190/study1_negative": ("hand", 0, [0.1, 0.3, 0.2]),
    "valid/XR_HAND/patient11191/study1_negative": ("hand", 0, [0.55]),
}


@pytest.fixture
def images() -> pd.DataFrame:
    rows = [
        {
            "image_path": f"/data/MURA-v1.1/{study}/image{v + 1}.png",
            "study_id": study,
            "patient_id": study.split("/")[2],
            "region": region,
            "label": label,
            "split": "test",
            "probability": p,
        }
        for study, (region, label, views) in STUDIES.items()
        for v, p in enumerate(views)
    ]
    return pd.DataFrame(rows)


def test_image_level_metrics_match_hand_computation(images):
    table = metric_table(images, 0.5, n_boot=0)
    assert list(table.index) == ["hand", "wrist", "overall"]
    wrist, hand, overall = table.loc["wrist"], table.loc["hand"], table.loc["overall"]
    # wrist: TP 0.9 0.7, FN 0.4 | TN 0.2 0.4, FP 0.6
    assert (wrist.tn, wrist.fp, wrist.fn, wrist.tp) == (2, 1, 1, 2)
    assert (wrist["count"], wrist.studies, wrist.abnormal) == (6, 4, 3)
    for metric in ("sensitivity", "specificity", "precision", "f1", "accuracy"):
        assert wrist[metric] == pytest.approx(2 / 3)
    assert wrist.kappa == pytest.approx(1 / 3)  # po 4/6, pe 1/2
    assert wrist.auc == pytest.approx(7.5 / 9)  # the 0.4-0.4 pair counts half
    # hand: TP 0.8 | TN 0.1 0.3 0.2, FP 0.55
    assert (hand.tn, hand.fp, hand.fn, hand.tp) == (3, 1, 0, 1)
    assert hand.sensitivity == 1 and hand.specificity == 0.75 and hand.precision == 0.5
    assert hand.f1 == pytest.approx(2 / 3) and hand.accuracy == pytest.approx(0.8)
    assert hand.kappa == pytest.approx(6 / 11)  # po 0.8, pe 0.56
    assert hand.auc == 1.0
    # overall
    assert (overall.tn, overall.fp, overall.fn, overall.tp) == (5, 2, 1, 3)
    assert overall.sensitivity == 0.75 and overall.specificity == pytest.approx(5 / 7)
    assert overall.precision == pytest.approx(0.6) and overall.accuracy == pytest.approx(8 / 11)
    assert overall.kappa == pytest.approx(26 / 59)  # po 88/121, pe 62/121
    assert overall.auc == pytest.approx(25.5 / 28)


def test_study_probability_is_the_mean_of_views_and_study_metrics(images):
    studies = study_table(images)
    assert list(studies["study_id"]) == list(STUDIES)  # first-appearance order
    assert studies["probability"].to_numpy() == pytest.approx([0.8, 0.4, 0.3, 0.6, 0.8, 0.2, 0.55])
    assert list(studies["n_views"]) == [2, 1, 2, 1, 1, 3, 1]
    assert list(studies["label"]) == [1, 1, 0, 0, 1, 0, 0]
    table = metric_table(studies, 0.5, n_boot=0)
    wrist, hand, overall = table.loc["wrist"], table.loc["hand"], table.loc["overall"]
    assert (wrist.tn, wrist.fp, wrist.fn, wrist.tp) == (1, 1, 1, 1)
    assert wrist.kappa == pytest.approx(0.0) and wrist.auc == pytest.approx(0.75)
    assert (hand.tn, hand.fp, hand.fn, hand.tp) == (1, 1, 0, 1)
    assert hand.kappa == pytest.approx(0.4) and hand.accuracy == pytest.approx(2 / 3)
    assert (overall.tn, overall.fp, overall.fn, overall.tp) == (2, 2, 1, 2)
    assert overall["count"] == 7 and overall.studies == 7
    assert overall.kappa == pytest.approx(0.16) and overall.f1 == pytest.approx(4 / 7)
    assert overall.auc == pytest.approx(10 / 12)


def test_scorer_csv_lines(images):
    text = scorer_csv(study_table(images), 0.5)
    assert text.splitlines() == [
        "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1",
        "MURA-v1.1/valid/XR_WRIST/patient11186/study1_positive/,0",
        "MURA-v1.1/valid/XR_WRIST/patient11187/study1_negative/,0",
        "MURA-v1.1/valid/XR_WRIST/patient11188/study1_negative/,1",
        "MURA-v1.1/valid/XR_HAND/patient11189/study1_positive/,1",
        "MURA-v1.1/valid/XR_HAND/patient11190/study1_negative/,0",
        "MURA-v1.1/valid/XR_HAND/patient11191/study1_negative/,1",
    ]
    assert text.endswith("\n") and "study_path" not in text  # no header, as MURA's CSVs
    assert scorer_csv(study_table(images), 0.4).splitlines()[1].endswith(",1")  # >= threshold


def test_unknown_labels_are_left_out_and_one_class_regions_give_nan(images):
    extra = images.iloc[:1].assign(image_path="/x.png", study_id="s", label=-1, probability=0.9)
    single = pd.DataFrame(
        {"image_path": ["/a", "/b"], "study_id": ["a", "b"], "patient_id": ["a", "b"],
         "region": "elbow", "label": 1, "split": "test", "probability": [0.7, 0.2]}
    )  # fmt: skip
    table = metric_table(pd.concat([images, extra, single]), 0.5, n_boot=50)
    assert table.loc["overall", "count"] == 13
    elbow = table.loc["elbow"]
    assert np.isnan(elbow.auc) and np.isnan(elbow.specificity) and np.isnan(elbow.auc_low)
    assert elbow.sensitivity == 0.5
    with pytest.raises(DatasetError, match="known label"):
        metric_table(extra, 0.5)


def test_point_metrics_agree_with_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1).round(2)
    result = point_metrics(labels, scores, 0.45)
    assert result["kappa"] == pytest.approx(cohen_kappa_score(labels, scores >= 0.45))
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_weighted_metrics_equal_metrics_on_replicated_rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = rng.random(40).round(1)  # many ties
    weights = rng.integers(0, 4, size=(3, 40)).astype(float)
    vectorised = weighted_metrics(labels, scores, 0.5, weights)
    for b in range(3):
        reps = weights[b].astype(int)
        expected = point_metrics(np.repeat(labels, reps), np.repeat(scores, reps), 0.5)
        for metric in METRICS:
            assert vectorised[metric][b] == pytest.approx(expected[metric]), metric


def _clustered(n_studies: int = 40, views: int = 5, seed: int = 0) -> pd.DataFrame:
    """Studies whose views are identical copies: information is per study, not per image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_studies)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.01, 0.99)
    return pd.DataFrame(
        {
            "image_path": [f"/s{s}/v{v}.png" for s in range(n_studies) for v in range(views)],
            "study_id": np.repeat([f"s{s}" for s in range(n_studies)], views),
            "patient_id": np.repeat([f"p{s}" for s in range(n_studies)], views),
            "region": np.repeat(np.where(np.arange(n_studies) % 2, "hand", "wrist"), views),
            "label": np.repeat(labels, views),
            "split": "test",
            "probability": np.repeat(probs, views),
        }
    )


def test_bootstrap_resamples_studies_not_images():
    rows = _clustered()
    weights = cluster_weights(rows["study_id"].to_numpy(), rows["region"].to_numpy(), n_boot=200)
    assert weights.shape == (200, len(rows))
    by_study = pd.DataFrame(weights.T).groupby(rows["study_id"].to_numpy())
    assert (by_study.nunique() == 1).all().all()  # the views of a study share a weight
    per_study = by_study.first()
    regions = rows.drop_duplicates("study_id").set_index("study_id")["region"]
    for region in ("hand", "wrist"):  # stratified: each resample keeps 20 studies per region
        assert (per_study[regions.loc[per_study.index] == region].sum() == 20).all()

    clustered = metric_table(rows, 0.5, n_boot=500, seed=0)
    naive = metric_table(rows, 0.5, n_boot=500, seed=0, cluster=None)
    for metric in ("accuracy", "auc", "kappa"):
        width = (
            clustered.loc["overall", f"{metric}_high"] - clustered.loc["overall", f"{metric}_low"]
        )
        naive_width = naive.loc["overall", f"{metric}_high"] - naive.loc["overall", f"{metric}_low"]
        assert width > 1.5 * naive_width, metric  # five identical views are not five studies


def test_bootstrap_is_reproducible_and_contains_the_estimate(images):
    rows = _clustered(seed=4)
    first = metric_table(rows, 0.5, n_boot=300, seed=7)
    pd.testing.assert_frame_equal(first, metric_table(rows, 0.5, n_boot=300, seed=7))
    other = metric_table(rows, 0.5, n_boot=300, seed=8)
    assert not np.allclose(first["auc_low"], other["auc_low"])
    for metric in METRICS:
        for region in first.index:
            low, value, high = first.loc[region, [f"{metric}_low", metric, f"{metric}_high"]]
            assert low <= value <= high, (region, metric)


def test_metric_table_round_trips_through_json_dicts(images):
    table = metric_table(images, 0.5, n_boot=20)
    data = table_to_dict(table)
    assert data["overall"]["tp"] == 3 and isinstance(data["overall"]["tp"], int)
    pd.testing.assert_frame_equal(table_from_dict(data), table, check_dtype=False)


def test_threshold_presets_on_a_tiny_table():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    # t=0.7: TPR 1, FPR 2/8 -> J 0.75 (the best); kappa 0.545. t=0.9: J 0.5, kappa 0.615 (best).
    assert curves.threshold_presets(labels, scores) == {
        "0.5": 0.5,
        "youden": 0.7,
        "sensitivity>=0.90": 0.7,
        "specificity>=0.90": 0.9,  # 1 false positive of 8 is already specificity 0.875
        "max_kappa": 0.9,
    }
    assert np.isnan(curves.youden_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_curves_and_calibration_by_hand():
    labels, probs = np.array([0, 1, 1, 1]), np.array([0.1, 0.1, 0.9, 0.9])
    roc = curves.roc_points(labels, probs)
    assert roc[["fpr", "tpr"]].values.tolist() == [[0, 0], [0, 2 / 3], [1, 1]]
    pr = curves.pr_points(labels, probs)
    assert pr["precision"].iloc[0] == 0.75 and pr["recall"].iloc[-1] == 0
    table = curves.reliability_table(labels, probs, n_bins=10)
    assert len(table) == 10 and table["count"].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table.loc[1, "observed_rate"] == 0.5 and table.loc[9, "mean_probability"] == 0.9
    assert curves.expected_calibration_error(labels, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert curves.brier_score(labels, probs) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert curves.roc_points(np.ones(2), np.array([0.2, 0.3])).empty


def test_report_has_table_2_and_table_3_only_for_mura(images):
    image_table = metric_table(images, 0.5, n_boot=50)
    study_table_ = metric_table(study_table(images), 0.5, n_boot=50)
    meta = {"dataset": {"kind": "mura", "root": "/data", "split": "test"}, "checkpoints": []}
    text = render_report(meta, image_table, study_table_, threshold=0.5, bootstrap={"n": 50})
    assert "Table 2" in text and "Table 3" in text
    assert "| wrist | 4 | 0.50 (" in text  # study level: 4 studies, specificity with interval
    assert "0.93" in text and "Radiologist 1" in text and "neXt-Ray seed ResNet-152" in text
    assert "20x too narrow" in text and "Different test sets" in text
    meta["dataset"]["kind"] = "fracatlas"
    text = render_report(meta, image_table, study_table_, threshold=0.5, bootstrap={"n": 50})
    assert "Table 2" in text and "Radiologist 1" not in text and "not MURA" in text
