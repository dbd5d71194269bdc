"""Can the maps be trusted? Faithfulness to the model, and localisation against fracture boxes.

Faithfulness (higher = more faithful), one definition: the gap between two removal curves,

    score = mean_f [ p(x without the LEAST relevant f) - p(x without the MOST relevant f) ]

over fractions f (default 0.1, 0.3, 0.5, 0.7, 0.9 of the pixels), where p is the probability
of the explained class (abnormal: sigmoid(logit); normal: 1 - that) and removed pixels take a
baseline value. It lies in [-1, 1]: > 0 when the pixels the map ranks high matter more to the
model than those it ranks low, 0 for a map no better than chance, and a reversed map scores
the negative. This is ROAD's "combined" score (Rong et al. 2022, as in
``pytorch_grad_cam.metrics.road.ROADCombined``), in probability units and, by default, with a
blurred copy of the image as the baseline instead of ROAD's linear imputation (that costs a
sparse solve per image and fraction; ask for it with ``baseline='road'``). Cost: 2 x len(f)
forward passes of the batch. Ties (maps are flat where ReLU zeroed them) are broken by a seeded
random order, so the score does not depend on raster order.

Localisation on FracAtlas: boxes are (x_center, y_center, width, height) as fractions of the
image, so they apply unchanged to the S x S map the model saw or to a map at the original size.
Pointing game: the map's peak lies inside a box. Energy share: the fraction of the map's
(ReLU'd) mass inside the union of the boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from nextray_core.errors import ConfigError
from nextray_core.options import FAITHFULNESS_BASELINES

FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
BASELINES: tuple[str, ...] = FAITHFULNESS_BASELINES
Box = tuple[float, float, float, float]


def _baseline(batch: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mean":  # 0 after normalisation = the dataset's mean colour
        return torch.zeros_like(batch)
    if kind == "blur":
        size = batch.shape[-1]
        sigma = max(size / 16.0, 1.0)
        kernel = 2 * math.ceil(3 * sigma) + 1
        return TF.gaussian_blur(batch, [kernel, kernel], [sigma, sigma])
    raise ConfigError(f"unknown baseline {kind!r}; choose one of {list(BASELINES)}")


def _ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of each pixel (0 = most relevant), ties broken by a seeded random order."""
    flat = maps.flatten(1).double()
    generator = torch.Generator().manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=generator, dtype=torch.float64)
    order = torch.argsort(flat + jitter * 1e-9, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks.view_as(maps)


def _road_impute(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    return NoisyLinearImputer(noise=0.0)(image.cpu().float(), keep.cpu().float()).to(image)


def _target_probability(model: nn.Module, batch: torch.Tensor, sign: float) -> torch.Tensor:
    logits = model(batch).reshape(len(batch), -1)[:, 0].float()
    return torch.sigmoid(sign * logits)


def faithfulness(
    model: nn.Module,
    batch: torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    *,
    target: str = "abnormal",
    fractions: Sequence[float] = FRACTIONS,
    baseline: str = "blur",
    seed: int = 0,
) -> np.ndarray:
    """Per-image faithfulness of ``maps`` (B x S x S, any scale) for ``model`` (see module doc).

    ``model`` maps a B x 3 x S x S batch to B x 1 logits and should be in eval mode.
    """
    if target not in ("abnormal", "normal"):
        raise ConfigError(f"unknown target {target!r}; choose 'abnormal' or 'normal'")
    if model.training:
        raise ValueError("call model.eval() before scoring faithfulness (dropout, batch norm)")
    if not fractions or not all(0.0 < f < 1.0 for f in fractions):
        raise ConfigError(f"fractions must lie strictly between 0 and 1, got {list(fractions)}")
    param = next(model.parameters())
    batch = batch.to(device=param.device, dtype=param.dtype)
    maps = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps).float().cpu()
    if maps.shape != (batch.shape[0], *batch.shape[-2:]):
        maps = F.interpolate(maps[:, None], size=batch.shape[-2:], mode="bilinear")[:, 0]
    ranks = _ranks(maps, seed).to(batch.device)
    pixels = ranks[0].numel()
    fill = None if baseline == "road" else _baseline(batch, baseline)
    sign = 1.0 if target == "abnormal" else -1.0
    gaps = []
    with torch.no_grad():
        for fraction in fractions:
            count = round(fraction * pixels)
            most = (ranks < count)[:, None]  # removed when the most relevant go first
            least = (ranks >= pixels - count)[:, None]
            if baseline == "road":
                pair = [
                    torch.stack(
                        [_road_impute(x, ~r[0]) for x, r in zip(batch, removed, strict=True)]
                    )
                    for removed in (most, least)
                ]
            else:
                pair = [torch.where(removed, fill, batch) for removed in (most, least)]
            probs = _target_probability(model, torch.cat(pair), sign)
            p_most, p_least = probs.split(len(batch))
            gaps.append(p_least - p_most)
    return torch.stack(gaps).mean(0).cpu().numpy()


def _box_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    height, width = shape
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    mask = np.zeros(shape, dtype=bool)
    for xc, yc, w, h in boxes:
        inside_y = np.abs(ys - yc) <= h / 2
        inside_x = np.abs(xs - xc) <= w / 2
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def localisation_scores(cam: np.ndarray, boxes: Sequence[Box]) -> tuple[bool, float]:
    """(pointing hit, energy share inside the boxes) for one 2-D map and normalised boxes.

    Negative values are ignored (ReLU). A map with no positive evidence, or no boxes, gives
    (False, nan): there is nothing to point with or at.
    """
    cam = np.maximum(np.nan_to_num(np.asarray(cam, dtype=np.float64)), 0.0)
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    total = cam.sum()
    if total <= 0 or len(boxes) == 0:
        return False, float("nan")
    mask = _box_mask(cam.shape, boxes)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[peak]), float(cam[mask].sum() / total)


def boxes_by_image(boxes: pd.DataFrame) -> dict[str, list[Box]]:
    """load_fracture_boxes's table -> {image_id: [(x_center, y_center, width, height), ...]}."""
    columns = ["x_center", "y_center", "width", "height"]
    return {
        str(image_id): [tuple(map(float, row)) for row in group[columns].to_numpy()]
        for image_id, group in boxes.groupby("image_id", sort=False)
    }


def localisation_frame(
    index: pd.DataFrame, maps: Sequence[np.ndarray], boxes: pd.DataFrame
) -> pd.DataFrame:
    """Score each image that has fracture boxes: index rows (image_id, region) in the order of
    ``maps``; ``boxes`` from load_fracture_boxes. Feed the result to localisation_report.
    """
    if len(index) != len(maps):
        raise ValueError(f"{len(index)} index rows but {len(maps)} maps")
    by_image = boxes_by_image(boxes)
    rows = []
    for (_, row), cam in zip(index.iterrows(), maps, strict=True):
        image_boxes = by_image.get(str(row["image_id"]))
        if not image_boxes:
            continue
        hit, share = localisation_scores(cam, image_boxes)
        rows.append(
            {
                "image_id": row["image_id"],
                "region": row["region"],
                "boxes": len(image_boxes),
                "pointing_hit": hit,
                "energy_inside": share,
            }
        )
    columns = ["image_id", "region", "boxes", "pointing_hit", "energy_inside"]
    return pd.DataFrame(rows, columns=columns)


def _wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def localisation_report(frame: pd.DataFrame) -> pd.DataFrame:
    """Per body part (column ``region``) and overall ('all'): pointing-game hit rate with a 95%
    Wilson interval, mean energy share, and counts. ``frame`` has one row per image with boxes
    and the columns region, pointing_hit, energy_inside (as from localisation_scores).
    """
    missing = {"region", "pointing_hit", "energy_inside"} - set(frame.columns)
    if missing:
        raise ValueError(f"localisation_report needs the column(s) {sorted(missing)}")
    rows = []
    groups = [*frame.groupby("region", sort=True), ("all", frame)]
    for region, group in groups:
        scored = group[group["energy_inside"].notna()]
        hits = int(scored["pointing_hit"].astype(bool).sum())
        low, high = _wilson(hits, len(scored))
        rows.append(
            {
                "region": region,
                "images": len(group),
                "scored": len(scored),
                "hits": hits,
                "hit_rate": hits / len(scored) if len(scored) else float("nan"),
                "hit_rate_low": low,
                "hit_rate_high": high,
                "mean_energy_inside": float(scored["energy_inside"].mean())
                if len(scored)
                else float("nan"),
            }
        )
    return pd.DataFrame(rows).set_index("region")
