"""Which map points at the finding? Localisation of several CAM methods on one set of images.

The shipped map method is chosen by measurement, on the VALIDATION split's boxed images, never
by taste: each method's pointing game (with its 95% Wilson interval) and energy share inside
the boxes, beside what a uniform map would score (its energy share is the boxes' area share).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from nextray_core.explain.methods import explain_batch
from nextray_core.explain.trust import (
    _box_mask,
    boxes_by_image,
    localisation_frame,
    localisation_report,
)
from nextray_core.imaging import read_radiograph
from nextray_core.transforms import Preprocessing, model_batch

DEFAULT_CANDIDATES: tuple[str, ...] = ("cam", "gradcam-layer3", "layercam-layer3")


def uniform_energy(rows: pd.DataFrame, boxes: pd.DataFrame, size: int = 320) -> float:
    """Mean share of the image inside its boxes: the energy a uniform map puts there."""
    by_image = boxes_by_image(boxes)
    shares = [
        float(_box_mask((size, size), by_image[str(i)]).mean())
        for i in rows["image_id"]
        if str(i) in by_image
    ]
    return float(np.mean(shares)) if shares else float("nan")


def localisation_by_method(
    model: nn.Module,
    rows: pd.DataFrame,
    boxes: pd.DataFrame,
    prep: Preprocessing,
    methods: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    batch_size: int = 8,
) -> pd.DataFrame:
    """One row per method: images, hits, hit_rate (+ low/high), mean_energy_inside, and the
    uniform map's energy. ``rows`` need image_path, image_id and region; ``boxes`` as from
    ``load_fracture_boxes``. Maps explain the positive class (the finding)."""
    by_image = boxes_by_image(boxes)
    rows = rows[[str(i) in by_image for i in rows["image_id"]]].reset_index(drop=True)
    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for start in range(0, len(rows), batch_size):
        paths = rows["image_path"].iloc[start : start + batch_size]
        batch = model_batch([read_radiograph(Path(p)).to_uint8() for p in paths], prep)
        for method in methods:
            maps[method] += list(explain_batch(model, batch, method).maps)
    uniform = uniform_energy(rows, boxes, prep.size)
    table = []
    for method in methods:
        report = localisation_report(localisation_frame(rows, maps[method], boxes))
        overall = report.loc["all"]
        table.append({"method": method, **overall.to_dict(), "uniform_energy": uniform})
    return pd.DataFrame(table)


def best_method(table: pd.DataFrame) -> str:
    """The method with the highest pointing-game rate (energy breaks ties)."""
    ranked = table.sort_values(["hit_rate", "mean_energy_inside"], ascending=False)
    return str(ranked["method"].iloc[0])
