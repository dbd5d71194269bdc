"""Likely label errors: the studies whose label the model most confidently disagrees with.

The rule is confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021), written here in a few lines of numpy because the
reference implementation, cleanlab, is AGPL-licensed and neXt-Ray is not:

1. per class j, a threshold t_j = the mean predicted probability of j among the studies
   labelled j (the model's self-confidence on that class);
2. a study's "confident" class is the class whose probability reaches its threshold (the more
   probable one if both do; none if neither does): the confident joint counts (given label,
   confident class) pairs;
3. studies in the off-diagonal cells (confident class != given label) are flagged;
4. every study is ranked by its self-confidence (the probability of its given label; lowest
   first, i.e. ``prune_by='self_confidence'``), flagged studies first. The normalised margin
   p(given) - max p(other) is reported too; with two classes it orders studies the same way.

The probabilities must be out-of-sample (a run on a split the model was not trained on):
in-sample probabilities have memorised the labels, noise included. The study probability is the
mean of its views' (``predict.study_table``), the same rule as everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from nextray_core.errors import DatasetError
from nextray_core.predict import study_table

RANK_COLUMNS: tuple[str, ...] = (
    "rank",
    "study_id",
    "region",
    "label",
    "probability",
    "n_views",
    "self_confidence",
    "margin",
    "confident_label",
    "flagged",
)


def class_probabilities(probability: np.ndarray) -> np.ndarray:
    """N x 2 (P(label 0), P(label 1)) from the positive-class probabilities."""
    p = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


def class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j: the mean P(j) over the examples labelled j (NaN for a class with no examples)."""
    labels = np.asarray(labels)
    return np.array(
        [probs[labels == j, j].mean() if (labels == j).any() else np.nan for j in range(2)]
    )


def confident_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each example's confident class (-1: no class reaches its threshold)."""
    above = probs >= thresholds[None, :]  # NaN thresholds compare False
    masked = np.where(above, probs, -np.inf)
    return np.where(above.any(axis=1), masked.argmax(axis=1), -1)


def confident_joint(labels: np.ndarray, confident: np.ndarray) -> np.ndarray:
    """2 x 2 counts: rows the given label, columns the confident class (unconfident left out)."""
    joint = np.zeros((2, 2), dtype=int)
    for given, true in zip(labels, confident, strict=True):
        if true >= 0:
            joint[int(given), int(true)] += 1
    return joint


def rank_label_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled study, most likely mislabelled first (columns ``RANK_COLUMNS``).

    ``predictions``: a run's image rows (or any table with study_id, region, label,
    probability). Unlabelled studies (label -1) and unreadable ones (NaN probability) are left
    out. The thresholds and the confident joint are in ``attrs``.
    """
    studies = study_table(predictions)
    studies = studies[studies["label"].isin([0, 1]) & studies["probability"].notna()]
    if studies.empty:
        raise DatasetError(
            "no labelled study with a probability: label errors need a run of labelled images"
        )
    labels = studies["label"].to_numpy(dtype=int)
    probs = class_probabilities(studies["probability"].to_numpy())
    thresholds = class_thresholds(labels, probs)
    confident = confident_labels(probs, thresholds)
    rows = np.arange(len(labels))
    self_confidence = probs[rows, labels]
    ranked = studies.assign(
        self_confidence=self_confidence,
        margin=self_confidence - probs[rows, 1 - labels],
        confident_label=confident,
        flagged=(confident >= 0) & (confident != labels),
    )
    ranked = ranked.sort_values(
        ["flagged", "self_confidence", "study_id"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    result = ranked[list(RANK_COLUMNS)].copy()
    result.attrs["thresholds"] = thresholds.tolist()
    result.attrs["confident_joint"] = confident_joint(labels, confident).tolist()
    return result


def flip_labels(
    predictions: pd.DataFrame, share: float, seed: int = 0
) -> tuple[pd.DataFrame, set[str]]:
    """A copy with the labels of a random ``share`` of the labelled studies flipped (all views
    of a study together), and the flipped study ids: the ground truth for measuring the ranking."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    labelled = predictions.loc[predictions["label"].isin([0, 1]), "study_id"].unique()
    rng = np.random.default_rng(seed)
    count = max(1, round(share * len(labelled)))
    flipped = set(rng.choice(np.sort(labelled), size=count, replace=False).tolist())
    copy = predictions.copy()
    hit = copy["study_id"].isin(flipped)
    copy.loc[hit, "label"] = 1 - copy.loc[hit, "label"]
    return copy, flipped


def precision_at_k(ranked: pd.DataFrame, truly_wrong: Iterable[str], k: int) -> float:
    """Share of the top ``k`` ranked studies that are in ``truly_wrong``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    wrong = set(truly_wrong)
    top = ranked["study_id"].head(k)
    return float(top.isin(wrong).sum()) / len(top)


def flip_experiment(
    predictions: pd.DataFrame, share: float = 0.1, seed: int = 0, k: int | None = None
) -> dict[str, float]:
    """Flip a random ``share`` of study labels and measure how many the ranking finds.

    ``k`` defaults to the number flipped; chance is ``share`` (a random ranking's precision).
    Studies already mislabelled in the run count as misses, so the number is a lower bound.
    """
    noisy, flipped = flip_labels(predictions, share, seed)
    ranked = rank_label_errors(noisy)
    k = len(flipped) if k is None else k
    return {
        "studies": len(ranked),
        "flipped": len(flipped),
        "k": k,
        "precision_at_k": precision_at_k(ranked, flipped, k),
        "chance": len(flipped) / len(ranked),
        "flagged": int(ranked["flagged"].sum()),
        "recall_of_flagged": float(ranked.loc[ranked["flagged"], "study_id"].isin(flipped).sum())
        / len(flipped),
    }


# A reviewer's marks: kept apart from the data and the run, exported and re-imported as CSV.
MARKS: tuple[str, ...] = ("label looks wrong", "model wrong", "unsure")
MARK_COLUMNS: tuple[str, ...] = ("study_id", "mark", "note")


def marks_csv(marks: dict[str, str], notes: dict[str, str] | None = None) -> str:
    """The marks as CSV text (study_id, mark, note), in study order."""
    notes = notes or {}
    frame = pd.DataFrame(
        [(study, mark, notes.get(study, "")) for study, mark in sorted(marks.items())],
        columns=list(MARK_COLUMNS),
    )
    return frame.to_csv(index=False)


def read_marks(source) -> tuple[dict[str, str], dict[str, str]]:
    """(marks, notes) from a CSV written by ``marks_csv`` (a path or a file-like object);
    raises ``DatasetError`` naming the problem for anything else."""
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"the marks file is not a readable CSV: {error}") from error
    missing = [c for c in ("study_id", "mark") if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"the marks file lacks the column(s) {missing}; export marks from the Label review "
            "page to get the expected columns study_id, mark, note"
        )
    unknown = sorted(set(frame["mark"]) - set(MARKS))
    if unknown:
        raise DatasetError(f"unknown mark(s) {unknown} in the marks file; allowed: {list(MARKS)}")
    notes = frame["note"] if "note" in frame.columns else pd.Series("", index=frame.index)
    marks = dict(zip(frame["study_id"], frame["mark"], strict=True))
    return marks, {s: n for s, n in zip(frame["study_id"], notes, strict=True) if n}
