from __future__ import annotations

import numpy as np
import torch

from nextray_core.datasets import load_dataset
from nextray_core.datasets.synthetic import make_synthetic_mura
from nextray_core.loader import RadiographDataset, build_cache
from nextray_core.transforms import Preprocessing, eval_transform


def test_cached_and_uncached_items_agree_and_the_cache_is_reused(tmp_path):
    root = make_synthetic_mura(tmp_path / "mura", patients_train=3, patients_valid=2)
    index = load_dataset("mura", root).head(10)
    transform = eval_transform(Preprocessing(size=32))
    cache = build_cache(index["image_path"].tolist(), 32, tmp_path / "cache")
    assert cache.shape == (10, 32, 32) and cache.dtype == np.uint8
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and not files[0].name.endswith(".tmp.npy")
    direct, cached = (
        RadiographDataset(index, transform),
        RadiographDataset(index, transform, cache=cache),
    )
    for position in (0, 9):
        image, label, row = direct[position]
        image_c, label_c, row_c = cached[position]
        assert image.shape == (3, 32, 32) and row == row_c == position
        assert label == label_c == float(index["label"].iloc[position])
        assert torch.allclose(image, image_c, atol=0.05)
    mtime = files[0].stat().st_mtime_ns
    build_cache(index["image_path"].tolist(), 32, tmp_path / "cache")
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
