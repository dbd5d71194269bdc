"""What the Study viewer shows beside the model's answer: window/level, zoom, ground-truth boxes.

Display only (no model): a radiograph's float pixels -> uint8 under a window (centre, width in
the [0, 1] intensity units of ``imaging.Radiograph``: for a 16-bit PNG or a DICOM this spreads a
narrow band of its full range over the screen's 256 levels), a crop around a point for zoom,
and the dataset's fracture boxes drawn in. Boxes are looked up per run: a ``boxes.csv`` shipped
in the run, else the FracAtlas copy the run was evaluated on (``run.json``'s dataset root).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from nextray_core.errors import ConfigError, DatasetError
from nextray_core.explain.trust import Box, boxes_by_image

RUN_BOXES_FILE = "boxes.csv"
BOX_COLOUR = (0, 255, 0)


def window_level(pixels: np.ndarray, centre: float = 0.5, width: float = 1.0) -> np.ndarray:
    """uint8 display of float pixels in [0, 1]: ``centre - width/2`` -> 0, ``centre + width/2``
    -> 255 (the full window, centre 0.5 width 1, equals ``Radiograph.to_uint8``)."""
    if not width > 0:
        raise ConfigError(f"window width must be above 0, got {width}")
    low = centre - width / 2
    scaled = (np.asarray(pixels, dtype=np.float32) - low) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def zoom_crop(image: np.ndarray, factor: float = 1.0, x: float = 0.5, y: float = 0.5):
    """The 1/``factor`` part of ``image`` centred on (``x``, ``y``) (fractions of width and
    height), kept inside the image; ``factor`` 1 returns the image itself."""
    if factor < 1:
        raise ConfigError(f"zoom must be 1 or more, got {factor}")
    if factor == 1:
        return image
    height, width = image.shape[:2]
    h, w = max(1, round(height / factor)), max(1, round(width / factor))
    top = int(np.clip(round(y * height - h / 2), 0, height - h))
    left = int(np.clip(round(x * width - w / 2), 0, width - w))
    return image[top : top + h, left : left + w]


def draw_boxes(image: np.ndarray, boxes: Sequence[Box], thickness: int | None = None):
    """An RGB copy of ``image`` (gray or RGB uint8) with the boxes (x_center, y_center, width,
    height as image fractions) outlined."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    thickness = thickness or max(1, round(max(height, width) / 200))
    for xc, yc, w, h in boxes:
        start = (round((xc - w / 2) * width), round((yc - h / 2) * height))
        end = (round((xc + w / 2) * width), round((yc + h / 2) * height))
        cv2.rectangle(rgb, start, end, BOX_COLOUR, thickness)
    return rgb


def image_key(row: Mapping[str, Any]) -> str:
    """The key boxes are stored under: FracAtlas' image_id (the file name), else the file name."""
    image_id = row.get("image_id") if hasattr(row, "get") else None
    return str(image_id) if image_id else Path(str(row["image_path"])).name


def boxes_for_run(predictions: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``boxes`` (load_fracture_boxes's table) for the images of ``predictions``:
    what ``evaluate --copy-images`` ships as the run's boxes.csv, so that a copied run (the
    demo's, on a fresh clone) still has its ground truth."""
    keys = {image_key(row) for _, row in predictions.iterrows()}
    return boxes[boxes["image_id"].astype(str).isin(keys)].reset_index(drop=True)


def run_boxes(run_path: str | Path, meta: Mapping[str, Any]) -> tuple[dict[str, list[Box]], str]:
    """({image key: boxes}, where they came from or why there are none) for a run."""
    from nextray_core.datasets.fracatlas import load_fracture_boxes

    shipped = Path(run_path) / RUN_BOXES_FILE
    if shipped.is_file():
        return boxes_by_image(pd.read_csv(shipped, dtype={"image_id": str})), str(shipped)
    dataset = meta.get("dataset") or {}
    if dataset.get("kind") != "fracatlas":
        return {}, f"the run's dataset ({dataset.get('kind', 'unknown')}) has no boxes"
    try:
        return boxes_by_image(load_fracture_boxes(dataset.get("root", ""))), dataset["root"]
    except (DatasetError, OSError) as error:
        return {}, f"FracAtlas boxes not found ({error})"
