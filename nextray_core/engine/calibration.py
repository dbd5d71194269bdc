"""Real radiographs that a checkpoint carries for its engine: int8 ranges and the guard.

``nextray train`` stores a sample of 128 of its validation images (uint8, at the model's input size,
decoded and resized exactly as in training) with every checkpoint, so any machine can check a
faster backend against fp32 without the dataset. Up to half the sample is abnormal, so the
guard's AUC comparison has both classes; images alternate between classes, and the first half
(int8 calibration) and second half (guard) of the sample each get both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nextray_core.checkpoint import load_checkpoint, save_checkpoint
from nextray_core.loader import load_resized

DEFAULT_COUNT = 128


def pick_rows(index: pd.DataFrame, count: int = DEFAULT_COUNT, seed: int = 0) -> pd.DataFrame:
    """Up to ``count`` rows, classes alternating (abnormal at most half), reproducibly."""
    rng = np.random.default_rng(seed)
    positives = index[index["label"] == 1]
    others = index[index["label"] != 1]
    take_pos = min(len(positives), count // 2)
    take_other = min(len(others), count - take_pos)
    pos = positives.iloc[rng.permutation(len(positives))[:take_pos]]
    neg = others.iloc[rng.permutation(len(others))[:take_other]]
    order = []
    for i in range(max(len(pos), len(neg))):
        order += [frame.iloc[[i]] for frame in (pos, neg) if i < len(frame)]
    return pd.concat(order) if order else index.iloc[:0]


def calibration_tensors(
    index: pd.DataFrame, size: int, count: int = DEFAULT_COUNT, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``calibration.images`` (N x S x S uint8) and ``calibration.labels`` from index rows."""
    from nextray_core.engine.engine import CALIBRATION_IMAGES, CALIBRATION_LABELS

    rows = pick_rows(index, count, seed)
    images = np.stack([load_resized(path, size) for path in rows["image_path"]])
    return {
        CALIBRATION_IMAGES: torch.from_numpy(images),
        CALIBRATION_LABELS: torch.tensor(rows["label"].to_numpy(), dtype=torch.int8),
    }


def add_calibration(
    checkpoint: str | Path, index: pd.DataFrame, count: int = DEFAULT_COUNT, seed: int = 0
) -> None:
    """Rewrite a checkpoint (same weights dtype and card) with calibration images added."""
    model, card, extras = load_checkpoint(checkpoint)
    extras |= calibration_tensors(index, card.prep.size, count, seed)
    dtype = getattr(torch, card.weights_dtype)
    save_checkpoint(model, Path(checkpoint), card, dtype=dtype, extra_tensors=extras)
