"""ROC and PR curves, threshold presets and calibration: what the dashboard plots and offers.

Thresholds returned here are score values: ``probability >= threshold`` is abnormal, as in
``metrics``. Every function accepts labels 0/1 and probabilities; with a single class present
the curves are empty and the presets NaN, never an exception.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, precision_recall_curve, roc_curve

from nextray_core.metrics import OVERALL, rates_from_counts

PRESETS: tuple[str, ...] = (
    "0.5",
    "youden",
    "sensitivity>=0.90",
    "specificity>=0.90",
    "max_kappa",
)


def _two_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def _operating_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Every distinct threshold (highest first) with its counts: tn, fp, fn, tp, fpr, tpr."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    points = pd.DataFrame({"threshold": thresholds, "fpr": fpr, "tpr": tpr}).iloc[1:]  # skip inf
    points["tp"] = np.round(points["tpr"] * positives)
    points["fp"] = np.round(points["fpr"] * negatives)
    points["fn"] = positives - points["tp"]
    points["tn"] = negatives - points["fp"]
    return points.reset_index(drop=True)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """ROC curve points (threshold, fpr, tpr), starting at (0, 0); empty if one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return pd.DataFrame(columns=["threshold", "fpr", "tpr"], dtype=float)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nan)  # the (0, 0) corner
    return pd.DataFrame({"threshold": thresholds, "fpr": fpr, "tpr": tpr})


def pr_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Precision-recall curve points (threshold, recall, precision); empty if one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return pd.DataFrame(columns=["threshold", "recall", "precision"], dtype=float)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    thresholds = np.r_[thresholds, np.nan]  # the final (recall 0, precision 1) point
    return pd.DataFrame({"threshold": thresholds, "recall": recall, "precision": precision})


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (the highest one on ties)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return float("nan")
    points = _operating_points(labels, scores)
    return float(points["threshold"].iloc[int(np.argmax(points["tpr"] - points["fpr"]))])


def sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, minimum: float = 0.9) -> float:
    """The highest threshold whose sensitivity is at least ``minimum`` (best specificity)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return float("nan")
    points = _operating_points(labels, scores)
    reached = points[points["tpr"] >= minimum - 1e-12]
    return float(reached["threshold"].iloc[0]) if len(reached) else float("nan")


def specificity_threshold(labels: np.ndarray, scores: np.ndarray, minimum: float = 0.9) -> float:
    """The lowest threshold whose specificity is at least ``minimum`` (best sensitivity).

    NaN when even the highest threshold flags too many normals.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return float("nan")
    points = _operating_points(labels, scores)
    kept = points[1 - points["fpr"] >= minimum - 1e-12]
    return float(kept["threshold"].iloc[-1]) if len(kept) else float("nan")


def max_kappa_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold with the highest Cohen's kappa (the highest one on ties)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if not _two_classes(labels):
        return float("nan")
    points = _operating_points(labels, scores)
    kappa = rates_from_counts(points["tn"], points["fp"], points["fn"], points["tp"])["kappa"]
    return float(points["threshold"].iloc[int(np.nanargmax(kappa))])


def threshold_presets(labels: np.ndarray, scores: np.ndarray, target: float = 0.9) -> dict:
    """The named thresholds of ``PRESETS`` for these labels and scores."""
    return {
        "0.5": 0.5,
        "youden": youden_threshold(labels, scores),
        "sensitivity>=0.90": sensitivity_threshold(labels, scores, target),
        "specificity>=0.90": specificity_threshold(labels, scores, target),
        "max_kappa": max_kappa_threshold(labels, scores),
    }


def reliability_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins: count, mean predicted probability, observed abnormal rate.

    Empty bins are kept (count 0, NaN rates) so every table has ``n_bins`` rows.
    """
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.floor(probs * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_prob = np.bincount(bins, weights=probs, minlength=n_bins) / count
        observed = np.bincount(bins, weights=labels, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count,
            "mean_probability": mean_prob,
            "observed_rate": observed,
        }
    )


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted and observed rate over the bins."""
    table = reliability_table(labels, probs, n_bins)
    used = table[table["count"] > 0]
    if used.empty:
        return float("nan")
    gap = (used["mean_probability"] - used["observed_rate"]).abs()
    return float((gap * used["count"]).sum() / used["count"].sum())


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between probability and label (lower is better)."""
    if len(labels) == 0:
        return float("nan")
    return float(brier_score_loss(np.asarray(labels), np.asarray(probs, dtype=float), pos_label=1))


def curve_summary(
    rows: pd.DataFrame, *, probability: str = "probability", n_bins: int = 10
) -> dict:
    """Per region and overall: ROC, PR, reliability bins, ECE, Brier and presets (JSON-ready)."""
    labelled = rows[rows["label"].isin([0, 1])]
    groups = {
        str(r): labelled[labelled["region"] == r] for r in sorted(labelled["region"].unique())
    }
    groups[OVERALL] = labelled
    summary = {}
    for name, group in groups.items():
        labels = group["label"].to_numpy(dtype=int)
        scores = group[probability].to_numpy(dtype=float)
        summary[name] = {
            "roc": roc_points(labels, scores).to_dict(orient="list"),
            "pr": pr_points(labels, scores).to_dict(orient="list"),
            "calibration": reliability_table(labels, scores, n_bins).to_dict(orient="list"),
            "ece": expected_calibration_error(labels, scores, n_bins),
            "brier": brier_score(labels, scores),
            "presets": threshold_presets(labels, scores),
        }
    return summary
