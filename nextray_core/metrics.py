"""Metrics at a threshold, per region and overall, with study-level (cluster) bootstrap intervals.

Point estimates come from scikit-learn. Intervals come from a bootstrap that resamples STUDIES,
not images: the views of one study are strongly correlated, so resampling images would treat
them as independent evidence and give intervals that are too narrow (the MURA paper's intervals
are too narrow for a related reason). The resampling is stratified by region, so every resample
keeps each region's number of studies, and it is vectorised: a resample is a vector of
per-study multiplicities, every count is a weighted sum, and 1,000 resamples of ~3k images take
well under a second.

A prediction is positive (abnormal) when ``probability >= threshold``, everywhere in neXt-Ray.
Rows with an unknown label (-1) are left out. Undefined values (a region with one class has no
AUC; no predicted positives means no precision) are NaN, never an exception.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from nextray_core.errors import DatasetError

METRICS: tuple[str, ...] = (
    "specificity",
    "sensitivity",
    "precision",
    "f1",
    "accuracy",
    "kappa",
    "auc",
)
COUNT_COLUMNS: tuple[str, ...] = ("count", "studies", "abnormal", "tn", "fp", "fn", "tp")
OVERALL = "overall"
_CHUNK = 250  # resamples handled at once: bounds memory at _CHUNK x rows floats


def predicted_labels(probability: np.ndarray, threshold: float) -> np.ndarray:
    """1 (abnormal) where ``probability >= threshold``, else 0."""
    return (np.asarray(probability, dtype=float) >= threshold).astype(np.int64)


def confusion(labels: np.ndarray, probability: np.ndarray, threshold: float) -> np.ndarray:
    """The 2x2 confusion matrix ``[[tn, fp], [fn, tp]]`` (rows: truth, columns: prediction)."""
    return confusion_matrix(labels, predicted_labels(probability, threshold), labels=[0, 1])


def rates_from_counts(tn, fp, fn, tp) -> dict[str, np.ndarray]:
    """Specificity, sensitivity, precision, F1, accuracy and kappa from (weighted) counts.

    Works elementwise on arrays, so one call scores every bootstrap resample; a zero
    denominator gives NaN.
    """
    tn, fp, fn, tp = (np.asarray(x, dtype=float) for x in (tn, fp, fn, tp))
    n = tn + fp + fn + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = (tp + tn) / n
        chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)
        return {
            "specificity": tn / (tn + fp),
            "sensitivity": tp / (tp + fn),
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "accuracy": observed,
            "kappa": kappa,
        }


def point_metrics(labels: np.ndarray, probability: np.ndarray, threshold: float) -> dict:
    """Counts and every metric in ``METRICS`` for one group of rows (labels 0/1 only)."""
    labels = np.asarray(labels, dtype=np.int64)
    probability = np.asarray(probability, dtype=float)
    (tn, fp), (fn, tp) = confusion(labels, probability, threshold)
    result = {"count": len(labels), "abnormal": int(labels.sum())}
    result |= {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    result |= {k: float(v) for k, v in rates_from_counts(tn, fp, fn, tp).items()}
    one_class = len(np.unique(labels)) < 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (one class everywhere) -> NaN
        kappa = cohen_kappa_score(labels, predicted_labels(probability, threshold), labels=[0, 1])
    result["kappa"] = float(kappa)
    result["auc"] = float("nan") if one_class else float(roc_auc_score(labels, probability))
    return result


def study_table(
    image_rows: pd.DataFrame, *, probability: str = "probability", keep_flagged: bool = False
) -> pd.DataFrame:
    """One row per study: its probability is the mean of its views' (NaN views skipped).

    The one definition of "a study is the mean of its views" (the MURA convention), used by
    training's validation, evaluation runs, predict and the dashboard.

    Views with ``flags`` (``sanity`` codes such as ``ood``, ``inverted``, ``colour_photo``: see
    ``predict_index``) are left out of the mean unless ``keep_flagged``; a study whose every view
    is flagged gets no probability. Columns: study_id, patient_id, region, label, split (when
    present), n_views (views that went into the mean), probability and the per-member columns
    averaged the same way; with a ``flags`` column also n_left_out and left_out (why, e.g.
    "ood x2, inverted x1").
    """
    first = [c for c in ("patient_id", "region", "label", "split") if c in image_rows.columns]
    averaged = [c for c in image_rows.columns if re.fullmatch(r"prob_\d+", c)] + [probability]
    flagged = pd.Series(False, index=image_rows.index)
    if "flags" in image_rows.columns and not keep_flagged:
        flagged = image_rows["flags"].fillna("").astype(str) != ""
    used = image_rows.copy()
    used.loc[flagged, averaged] = np.nan
    grouped = used.groupby("study_id", sort=False)
    studies = grouped[first].first()
    studies["n_views"] = grouped[probability].count()
    studies[averaged] = grouped[averaged].mean()
    if "flags" in image_rows.columns:
        left = image_rows[flagged & image_rows[probability].notna()]
        studies["n_left_out"] = left.groupby("study_id").size().reindex(studies.index).fillna(0)
        studies["n_left_out"] = studies["n_left_out"].astype(int)
        studies["left_out"] = (
            left.groupby("study_id")["flags"].agg(_why_left_out).reindex(studies.index).fillna("")
        )
    return studies.reset_index()


def _why_left_out(flags: pd.Series) -> str:
    """'ood x2, inverted x1' from the ``;``-joined flag codes of a study's left-out views."""
    counts = pd.Series([c for cell in flags for c in str(cell).split(";") if c]).value_counts()
    return ", ".join(f"{code} x{count}" for code, count in counts.items())


def cluster_weights(
    clusters: np.ndarray,
    strata: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """How often each ROW is drawn in each of ``n_boot`` resamples of its CLUSTER (study).

    Clusters are drawn with replacement within each stratum (region), so a resample keeps every
    stratum's cluster count. Returns an ``(n_boot, n_rows)`` float32 array; rows of one cluster
    always share a weight.
    """
    return np.concatenate(list(_weight_chunks(clusters, strata, n_boot, seed, n_boot)), axis=0)


def _weight_chunks(
    clusters: np.ndarray, strata: np.ndarray | None, n_boot: int, seed: int, chunk: int
) -> Iterator[np.ndarray]:
    cluster_codes, cluster_values = pd.factorize(pd.Series(clusters).astype(str))
    n_clusters = len(cluster_values)
    if strata is None:
        stratum_of_cluster = np.zeros(n_clusters, dtype=np.int64)
    else:
        row_strata = pd.factorize(pd.Series(strata).astype(str))[0]
        stratum_of_cluster = np.zeros(n_clusters, dtype=np.int64)
        stratum_of_cluster[cluster_codes] = row_strata
    members = [np.flatnonzero(stratum_of_cluster == s) for s in np.unique(stratum_of_cluster)]
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        counts = np.zeros((size, n_clusters), dtype=np.float32)
        offsets = np.arange(size)[:, None] * n_clusters
        for group in members:
            drawn = group[rng.integers(0, len(group), size=(size, len(group)))]
            flat = np.bincount((offsets + drawn).ravel(), minlength=size * n_clusters)
            counts += flat.reshape(size, n_clusters)
        yield counts[:, cluster_codes]


def weighted_metrics(
    labels: np.ndarray, probability: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric in ``METRICS`` for each row of ``weights`` (resamples x rows), vectorised."""
    labels = np.asarray(labels, dtype=np.int64)
    probability = np.asarray(probability, dtype=float)
    predicted = predicted_labels(probability, threshold)
    masks = np.stack(
        [(labels == t) & (predicted == p) for t, p in ((0, 0), (0, 1), (1, 0), (1, 1))], axis=1
    ).astype(np.float64)
    tn, fp, fn, tp = (weights.astype(np.float64) @ masks).T
    result = rates_from_counts(tn, fp, fn, tp)
    result["auc"] = weighted_auc(labels, probability, weights)
    return result


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count half) for each row of ``weights``; NaN if one class."""
    order = np.argsort(scores, kind="mergesort")
    ordered = np.asarray(scores, dtype=float)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    w = weights[:, order].astype(np.float64)
    positive = np.asarray(labels)[order] == 1
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / pairs
    return np.where(pairs > 0, auc, np.nan)


def metric_table(
    rows: pd.DataFrame,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    probability: str = "probability",
    cluster: str | None = "study_id",
    strata: str | None = "region",
) -> pd.DataFrame:
    """Counts and metrics per region plus 'overall', each metric with ``_low``/``_high`` bounds.

    ``rows`` are images (the bootstrap then resamples whole studies) or studies (one row each).
    ``cluster=None`` resamples rows independently (only to show how much narrower that is).
    ``n_boot=0`` skips the intervals (they are NaN).
    """
    labelled = rows[rows["label"].isin([0, 1])]
    if labelled.empty:
        raise DatasetError("no row has a known label (0 or 1): metrics need labelled data")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    labels = labelled["label"].to_numpy(dtype=np.int64)
    scores = labelled[probability].to_numpy(dtype=float)
    if np.isnan(scores).any():
        raise DatasetError(f"{int(np.isnan(scores).sum())} labelled row(s) have no probability")
    regions = labelled["region"].astype(str).to_numpy()
    clusters = labelled[cluster].to_numpy() if cluster else np.arange(len(labelled))
    groups = {name: regions == name for name in sorted(set(regions))}
    groups[OVERALL] = np.ones(len(labelled), dtype=bool)

    records = {}
    for name, mask in groups.items():
        record = point_metrics(labels[mask], scores[mask], threshold)
        record["studies"] = len(pd.unique(clusters[mask]))
        records[name] = record
    table = pd.DataFrame.from_dict(records, orient="index")
    table.index.name = "region"

    samples: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in groups}
    stratum = regions if strata else None
    for weights in _weight_chunks(clusters, stratum, n_boot, seed, _CHUNK):
        for name, mask in groups.items():
            samples[name].append(
                weighted_metrics(labels[mask], scores[mask], threshold, weights[:, mask])
            )
    tail = 50 * (1 - confidence)
    for name in groups:
        for metric in METRICS:
            values = (
                np.concatenate([chunk[metric] for chunk in samples[name]])
                if samples[name]
                else np.array([np.nan])
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: interval undefined
                low, high = np.nanpercentile(values, [tail, 100 - tail])
            table.loc[name, f"{metric}_low"] = low
            table.loc[name, f"{metric}_high"] = high
    ordered = list(COUNT_COLUMNS) + [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")]
    return table[ordered].astype({c: "int64" for c in COUNT_COLUMNS})


def table_to_dict(table: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """A metric table as plain JSON-ready dicts (NaN -> None), keyed by region."""

    def plain(value):
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and np.isnan(value) else value

    records = table.astype(object).to_dict(orient="index")
    return {str(r): {k: plain(v) for k, v in row.items()} for r, row in records.items()}


def table_from_dict(data: dict[str, dict]) -> pd.DataFrame:
    """Inverse of :func:`table_to_dict` (None -> NaN), e.g. for a run's metrics.json."""
    table = pd.DataFrame.from_dict(data, orient="index").astype(float)
    table.index.name = "region"
    counts = [c for c in COUNT_COLUMNS if c in table.columns]
    return table.astype({c: "int64" for c in counts})
