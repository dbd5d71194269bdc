"""A map of a whole run: each image's pooled features, projected, laid out in two dimensions.

``nextray evaluate`` keeps every image's pooled features (the 2048 numbers the classifier head
sees, from the same forward pass as the probability) and stores a compact projection in the
run's ``features.npz``: the top ``DIMS`` principal components as float16 (40,000 images: 4 MB
instead of 330 MB of raw features; float32 when a value would overflow float16, as the features
of an untrained ResNet-152 do), the PCA's mean and components (float32, to project new
images onto the same map) and, when the checkpoint has OOD statistics, each image's OOD
distance. Rows follow predictions.csv. The map is the first two components, or t-SNE
(scikit-learn) on the stored components; UMAP is not used (umap-learn pulls numba/llvmlite,
not installed here). Runs written before this (the shipped demo run) get the file from
``compute_run_features`` (``nextray run-features RUN``), which re-reads the run's images with
the run's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextray_core.errors import ConfigError, DatasetError
from nextray_core.metrics import predicted_labels

FEATURES_FILE = "features.npz"
DIMS = 50
MAP_METHODS: tuple[str, ...] = ("pca", "tsne")
COLOUR_BY: tuple[str, ...] = ("label", "prediction", "outcome", "region", "ood", "probability")
TSNE_LIMIT = 5_000  # t-SNE is O(n log n) but slow in absolute terms on 2 cores: sample above


@dataclass(frozen=True)
class RunFeatures:
    """The projection stored in a run: ``projection`` N x d (row i = predictions.csv row i)."""

    projection: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    ood_distance: np.ndarray | None = None

    def project(self, features: np.ndarray) -> np.ndarray:
        """New images' pooled features (M x F) onto the same components (M x d)."""
        return (np.asarray(features, dtype=np.float32) - self.mean) @ self.components.T


def fit_projection(
    features: np.ndarray, dims: int = DIMS, ood_distance: np.ndarray | None = None
) -> RunFeatures:
    """PCA of N x F features through the F x F covariance (cheap for N >> F; NaN rows, images
    that could not be read, are left out of the fit and stay NaN)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ConfigError(f"need N x F features for at least 2 images, got {features.shape}")
    ok = np.isfinite(features).all(axis=1)
    if ok.sum() < 2:
        raise DatasetError("fewer than two images have features; nothing to project")
    mean = features[ok].mean(axis=0)
    centred = features[ok] - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / (ok.sum() - 1))
    order = np.argsort(values)[::-1][: min(dims, features.shape[1], int(ok.sum()))]
    components = vectors[:, order].T
    components *= np.where(components.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # fixed sign
    projection = np.full((len(features), len(order)), np.nan)
    projection[ok] = centred @ components.T
    explained = values[order] / max(values.sum(), 1e-12)
    return RunFeatures(
        projection=projection.astype(_stored_dtype(projection)),
        mean=mean.astype(np.float32),
        components=components.astype(np.float32),
        explained=explained.astype(np.float32),
        ood_distance=None if ood_distance is None else np.asarray(ood_distance, np.float32),
    )


def _stored_dtype(projection: np.ndarray) -> type:
    """float16 (half the file) unless a value would overflow it to inf and fall off the map."""
    finite = projection[np.isfinite(projection)]
    fits = finite.size == 0 or np.abs(finite).max() < np.finfo(np.float16).max
    return np.float16 if fits else np.float32


def features_npz(stored: RunFeatures) -> dict[str, np.ndarray]:
    arrays = {
        "projection": stored.projection,
        "mean": stored.mean,
        "components": stored.components,
        "explained": stored.explained,
    }
    if stored.ood_distance is not None:
        arrays["ood_distance"] = stored.ood_distance
    return arrays


def write_features(run_path: str | Path, stored: RunFeatures) -> Path:
    """Save ``features.npz`` into a run folder (written to a temporary name, then renamed)."""
    path = Path(run_path) / FEATURES_FILE
    tmp = path.with_name(f".{FEATURES_FILE}.tmp.npz")
    np.savez_compressed(tmp, **features_npz(stored))
    tmp.replace(path)
    return path


def read_features(run_path: str | Path, n_images: int | None = None) -> RunFeatures | None:
    """The run's stored projection, or None if it has none; a file whose row count differs
    from the run's (``n_images``) is refused: it belongs to another version of the run."""
    path = Path(run_path) / FEATURES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        stored = RunFeatures(
            projection=data["projection"],
            mean=data["mean"],
            components=data["components"],
            explained=data["explained"],
            ood_distance=data.get("ood_distance"),
        )
    if n_images is not None and len(stored.projection) != n_images:
        raise DatasetError(
            f"{path} has {len(stored.projection)} rows but the run has {n_images} images; "
            f"recompute it with 'nextray run-features {run_path} --overwrite'"
        )
    return stored


def compute_run_features(engine, predictions: pd.DataFrame, batch_size: int = 16, device="cpu"):
    """Pooled features and OOD distances of a run's images with ``engine`` (the run's
    checkpoint): for runs evaluated before features were stored."""
    from nextray_core.predict import predict_index

    scored = predict_index(
        [(engine, engine.card)],
        predictions[["image_path", "study_id", "patient_id", "region", "label", "split"]],
        batch_size=batch_size,
        device=device,
        on_error="report",
        keep_features=True,
    )
    features = scored.attrs.pop("features", None)
    if features is None:
        raise DatasetError("none of the run's images could be read; nothing to map")
    return fit_projection(features, ood_distance=scored.attrs.pop("ood_distance", None))


def outcome(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """'true positive' / 'false positive' / 'false negative' / 'true negative' / 'unlabelled'."""
    names = np.array(["true negative", "false positive", "false negative", "true positive"])
    labels = np.asarray(labels)
    known = np.isin(labels, [0, 1])
    index = np.where(known, 2 * np.clip(labels, 0, 1) + np.asarray(predicted), 0)
    return np.where(known, names[index], "unlabelled")


def map_frame(
    predictions: pd.DataFrame,
    stored: RunFeatures,
    threshold: float,
    *,
    method: str = "pca",
    limit: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per drawn image: x, y and what the points can be coloured by.

    Above ``limit`` images (``TSNE_LIMIT`` for t-SNE) a seeded uniform random sample of
    ``limit`` is drawn; ``attrs['total']`` and ``attrs['drawn']`` say how many.
    """
    if method not in MAP_METHODS:
        raise ConfigError(f"unknown map method {method!r}; choose one of {MAP_METHODS}")
    if len(stored.projection) != len(predictions):
        raise DatasetError("the stored features do not match the run's images; recompute them")
    frame = predictions[["image_path", "study_id", "region", "label", "probability"]].copy()
    frame["prediction"] = predicted_labels(frame["probability"].to_numpy(), threshold)
    frame["outcome"] = outcome(frame["label"].to_numpy(), frame["prediction"].to_numpy())
    frame["ood"] = stored.ood_distance if stored.ood_distance is not None else np.nan
    frame["row"] = np.arange(len(frame))
    projection = stored.projection.astype(np.float32)
    usable = np.isfinite(projection).all(axis=1) & frame["probability"].notna().to_numpy()
    frame, projection = frame[usable], projection[usable]
    cap = min(limit, TSNE_LIMIT) if method == "tsne" else limit
    if len(frame) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), cap, replace=False))
        frame, projection = frame.iloc[keep], projection[keep]
    if method == "pca":
        xy = projection[:, :2]
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(frame) - 1) // 3)))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(projection)
    frame = frame.assign(x=xy[:, 0], y=xy[:, 1]).reset_index(drop=True)
    frame.attrs.update(total=int(usable.sum()), drawn=len(frame), method=method)
    return frame
