"""The run map's core: the stored PCA projection, its layout, sampling and outcome colours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from nextray_core.errors import DatasetError
from nextray_core.run_map import (
    fit_projection,
    map_frame,
    outcome,
    read_features,
    write_features,
)


def predictions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "image_path": [f"i{i}.png" for i in range(n)],
            "study_id": [f"s{i // 2}" for i in range(n)],
            "region": rng.choice(["hand", "leg"], n),
            "label": rng.integers(0, 2, n),
            "probability": rng.random(n),
        }
    )


def test_projection_is_the_pca_of_the_features():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))
    stored = fit_projection(features, dims=5)
    reference = PCA(5).fit(features)
    np.testing.assert_allclose(stored.explained, reference.explained_variance_ratio_, rtol=1e-3)
    ours, theirs = stored.projection.astype(float), reference.transform(features)
    for k in range(5):  # equal up to each component's sign
        sign = np.sign(ours[:, k] @ theirs[:, k])
        np.testing.assert_allclose(
            ours[:, k], sign * theirs[:, k], atol=0.02 * np.abs(theirs).max()
        )
    np.testing.assert_allclose(stored.project(features[:3]), stored.projection[:3], atol=0.05)


def test_unreadable_images_stay_out_of_the_fit_and_off_the_map(tmp_path):
    features = np.random.default_rng(1).normal(size=(50, 8))
    features[7] = np.nan
    stored = fit_projection(features, dims=3, ood_distance=np.arange(50.0))
    assert np.isnan(stored.projection[7]).all() and np.isfinite(stored.projection[8]).all()
    write_features(tmp_path, stored)
    back = read_features(tmp_path, 50)
    assert np.array_equal(back.projection, stored.projection, equal_nan=True)
    assert back.ood_distance.tolist() == list(range(50))
    frame = map_frame(predictions(50), back, 0.5)
    assert frame.attrs["total"] == 49 and 7 not in frame["row"].tolist()
    with pytest.raises(DatasetError, match="run-features"):
        read_features(tmp_path, 51)
    assert read_features(tmp_path / "nothing") is None


def test_large_runs_are_sampled_and_say_so():
    n = 3000
    stored = fit_projection(np.random.default_rng(2).normal(size=(n, 6)), dims=4)
    frame = map_frame(predictions(n), stored, 0.5, limit=1000)
    assert frame.attrs == {"total": n, "drawn": 1000, "method": "pca"}
    assert frame["row"].is_unique and frame["row"].is_monotonic_increasing
    np.testing.assert_allclose(
        frame[["x", "y"]].to_numpy(), stored.projection[frame["row"], :2].astype(np.float32)
    )
    tsne = map_frame(
        predictions(120),
        fit_projection(np.random.default_rng(3).normal(size=(120, 6))),
        0.5,
        method="tsne",
    )
    assert tsne.attrs["method"] == "tsne" and np.isfinite(tsne[["x", "y"]]).all().all()


def test_outcome_names_each_cell_of_the_confusion_matrix():
    labels = np.array([0, 0, 1, 1, -1])
    predicted = np.array([0, 1, 0, 1, 1])
    assert outcome(labels, predicted).tolist() == [
        "true negative",
        "false positive",
        "false negative",
        "true positive",
        "unlabelled",
    ]


def test_features_too_large_for_float16_are_stored_in_float32_not_lost(tmp_path):
    # an untrained ResNet-152's pooled features reach 1e5 and more: float16 overflowed to inf
    # and the map drew none of the images
    rng = np.random.default_rng(4)
    features = 1e6 * np.abs(rng.normal(size=(200, 12)))
    stored = fit_projection(features, dims=3)
    assert stored.projection.dtype == np.float32 and np.isfinite(stored.projection).all()
    write_features(tmp_path, stored)
    frame = map_frame(predictions(200), read_features(tmp_path, 200), 0.5)
    assert frame.attrs["drawn"] == 200
    np.testing.assert_allclose(
        stored.project(features[:3]), stored.projection[:3], rtol=1e-3, atol=1e-3 * 1e6
    )
    # ordinary features keep the small float16 file
    assert fit_projection(rng.normal(size=(200, 12)), dims=3).projection.dtype == np.float16
