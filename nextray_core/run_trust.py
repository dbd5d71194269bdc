"""Can a run's maps be trusted? Per-region localisation and faithfulness, cached in the run.

Two questions, answered on the run's own images with the checkpoint that scored it and the
map method its card recommends (``engine.answer.map_method``) unless told otherwise:

- **Localisation** (where the dataset has ground-truth boxes: FracAtlas' ``boxes.csv``): every
  positive image with boxes, its map of the evidence for the positive class, the pointing game
  (peak inside a box) and the energy share inside the boxes. Beside each, what a uniform map
  scores: its energy share is the boxes' area share, and that is also the chance that a peak
  dropped at random lands in a box. A map worth showing beats both clearly.
- **Faithfulness** (any run): ``explain.trust.faithfulness`` (removal curves, blurred
  baseline, in [-1, 1], 0 = no better than a random map) of the map of the class the model
  predicts at the run's threshold, on a seeded sample of up to ``per_region`` images per region
  (half of each label where the run has both). It costs ten forward passes per image, which is
  why it is sampled and why the result is cached.

The result is ``trust.json`` (per-region tables, method, checkpoint, settings) and
``trust_images.csv`` (one row per scored image) in the run folder, both written atomically;
``read_run_trust`` gives them back and the dashboard's Trust page shows them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nextray_core.errors import ConfigError, DatasetError
from nextray_core.explain.trust import (
    BASELINES,
    FRACTIONS,
    Box,
    _box_mask,
    faithfulness,
    localisation_report,
    localisation_scores,
)
from nextray_core.files import write_text_atomic
from nextray_core.imaging import read_radiograph
from nextray_core.metrics import predicted_labels
from nextray_core.runs import Run, dump_json, resolve_image_path
from nextray_core.transforms import model_batch
from nextray_core.viewer import image_key

TRUST_FORMAT = "nextray-trust/1"
TRUST_FILE = "trust.json"
TRUST_IMAGES_FILE = "trust_images.csv"
ALL = "all"
IMAGE_COLUMNS = [
    "image_path", "study_id", "region", "label", "probability", "boxes", "pointing_hit",
    "energy_inside", "uniform_energy", "target", "faithfulness",
]  # fmt: skip

Progress = Callable[[int, int, str], None]


@dataclass
class RunTrust:
    """trust.json's content (``summary``) and trust_images.csv's rows (``images``)."""

    summary: dict[str, Any]
    images: pd.DataFrame

    def table(self, part: str) -> pd.DataFrame:
        """'localisation' or 'faithfulness' per region (empty when that part was not scored)."""
        rows = (self.summary.get(part) or {}).get("regions") or []
        return pd.DataFrame(rows).set_index("region") if rows else pd.DataFrame()


def faithfulness_sample(predictions: pd.DataFrame, per_region: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_region`` images of each region, half of each label where both occur (the
    rest from the other label when one runs short), seeded; unreadable-labelled rows kept."""
    if per_region < 0:
        raise ConfigError(
            f"the faithfulness sample needs 0 or more images per region, got {per_region}"
        )
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in predictions.groupby("region", sort=True):
        by_label = [g for _, g in group.groupby("label", sort=True)]
        quota = [per_region // len(by_label)] * len(by_label)
        for i in range(per_region - sum(quota)):
            quota[i % len(quota)] += 1
        # hand a short label's unused quota to the others
        spare = sum(max(q - len(g), 0) for q, g in zip(quota, by_label, strict=True))
        quota = [min(q, len(g)) for q, g in zip(quota, by_label, strict=True)]
        for i, g in enumerate(by_label):
            extra = min(spare, len(g) - quota[i])
            quota[i] += extra
            spare -= extra
        for q, g in zip(quota, by_label, strict=True):
            if q:
                picked.append(g.iloc[np.sort(rng.choice(len(g), q, replace=False))])
    return pd.concat(picked) if picked else predictions.iloc[:0]


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def localisation_table(images: pd.DataFrame) -> list[dict[str, Any]]:
    """``explain.trust.localisation_report`` per region and overall, plus ``uniform``: what a
    uniform map scores on the same images (its energy share is the boxes' area share, which is
    also the chance that a peak dropped at random lands in a box)."""
    scored = images[images["energy_inside"].notna()]
    if scored.empty:
        return []
    report = localisation_report(scored)
    uniform = scored.groupby("region")["uniform_energy"].mean()
    uniform[ALL] = scored["uniform_energy"].mean()
    return report.assign(uniform=uniform).reset_index().to_dict("records")


def faithfulness_table(images: pd.DataFrame) -> list[dict[str, Any]]:
    """Per region and overall: mean faithfulness with a 95% t interval, the share above 0."""
    scored = images[images["faithfulness"].notna()]
    rows = []
    for region, group in [*scored.groupby("region", sort=True), (ALL, scored)]:
        if group.empty:
            continue
        values = group["faithfulness"].to_numpy(dtype=float)
        low, high = _t_interval(values)
        rows.append({
            "region": region, "images": len(values), "mean": float(values.mean()),
            "low": low, "high": high, "positive_share": float((values > 0).mean()),
        })  # fmt: skip
    return rows


def _read_batch(paths: Sequence[str], prep) -> tuple[torch.Tensor, list[bool]]:
    """The model batch of the readable images, and which of ``paths`` they are."""
    pictures, readable = [], []
    for path in paths:
        try:
            pictures.append(read_radiograph(path, warn=False).to_uint8())
            readable.append(True)
        except (DatasetError, OSError, ValueError):
            readable.append(False)
    batch = model_batch(pictures, prep) if pictures else torch.empty(0)
    return batch, readable


def compute_run_trust(
    engine,
    run: Run,
    boxes: Mapping[str, Sequence[Box]] | None = None,
    *,
    method: str | None = None,
    per_region: int = 20,
    baseline: str = "blur",
    seed: int = 0,
    batch_size: int = 8,
    boxes_source: str = "",
    progress: Progress | None = None,
) -> RunTrust:
    """Score ``run``'s maps with ``engine`` (an ``InferenceEngine`` of the checkpoint that
    scored the run): localisation on every positive image with ``boxes`` ({image key: boxes},
    as ``viewer.run_boxes`` gives), faithfulness on ``faithfulness_sample``. See the module doc.
    """
    from nextray_core.engine.answer import map_method

    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline {baseline!r}; choose one of {list(BASELINES)}")
    method = method or map_method(engine.card)
    threshold = run.default_threshold
    labelled = run.predictions[run.predictions["label"].isin([0, 1])].copy()
    labelled["key"] = [image_key(row) for _, row in labelled.iterrows()]
    boxes = boxes or {}
    boxed = labelled[(labelled["label"] == 1) & labelled["key"].map(lambda k: bool(boxes.get(k)))]
    sample = faithfulness_sample(labelled, per_region, seed)
    targets = np.where(
        predicted_labels(sample["probability"].to_numpy(), threshold) == 1, "abnormal", "normal"
    )
    jobs = [(boxed, "abnormal", "localisation")]
    jobs += [(sample[targets == t], t, "faithfulness") for t in ("abnormal", "normal")]
    total = sum(len(frame) for frame, _, _ in jobs)
    done = 0
    rows: dict[str, dict[str, Any]] = {}
    unreadable: set[str] = set()
    prep = engine.card.prep
    for frame, target, part in jobs:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            batch, readable = _read_batch(chunk["image_path"].tolist(), prep)
            unreadable.update(chunk["image_path"][[not r for r in readable]])
            chunk = chunk[readable]
            if len(chunk):
                maps = engine.explain(batch, method, target).maps
                if part == "faithfulness":
                    scores = faithfulness(
                        engine.model, batch, maps, target=target, baseline=baseline, seed=seed
                    )
                for i, (_, row) in enumerate(chunk.iterrows()):
                    entry = rows.setdefault(row["image_path"], _image_row(row))
                    if part == "localisation":
                        image_boxes = boxes[row["key"]]
                        hit, share = localisation_scores(maps[i], image_boxes)
                        entry.update(
                            boxes=len(image_boxes), pointing_hit=hit, energy_inside=share,
                            uniform_energy=float(_box_mask(maps[i].shape, image_boxes).mean()),
                        )  # fmt: skip
                    else:
                        entry.update(target=target, faithfulness=float(scores[i]))
            done += len(readable)
            if progress is not None:
                progress(done, total, part)
    images = pd.DataFrame(list(rows.values()), columns=IMAGE_COLUMNS)
    if unreadable and images.empty:
        first = sorted(unreadable)[0]
        raise DatasetError(
            f"none of the {len(unreadable)} images to score could be read (first: {first}); "
            "are they still where the run's predictions.csv says?"
        )
    checkpoint = engine.card
    summary = {
        "format": TRUST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"name": checkpoint.name, "weights_sha256": checkpoint.weights_sha256},
        "method": method,
        "input_size": prep.size,
        "threshold": threshold,
        "localisation": {
            "boxes_source": boxes_source,
            "target": "abnormal",
            "regions": localisation_table(images) if len(boxed) else [],
        },
        "faithfulness": {
            "target": f"the class predicted at threshold {threshold:.3f}",
            "baseline": baseline,
            "fractions": list(FRACTIONS),
            "per_region": per_region,
            "seed": seed,
            "regions": faithfulness_table(images),
        },
        "unreadable_images": sorted(unreadable),
    }
    return RunTrust(summary=summary, images=images)


def _image_row(row: pd.Series) -> dict[str, Any]:
    return {
        "image_path": row["image_path"], "study_id": row["study_id"], "region": row["region"],
        "label": int(row["label"]), "probability": float(row["probability"]), "boxes": 0,
        "pointing_hit": None, "energy_inside": float("nan"), "uniform_energy": float("nan"),
        "target": None, "faithfulness": float("nan"),
    }  # fmt: skip


def write_run_trust(run_path: str | Path, trust: RunTrust) -> Path:
    """trust_images.csv, then trust.json (the file readers look for), each renamed into place."""
    run_path = Path(run_path)
    # images inside the run (a shipped run) are stored relative to it, as predictions.csv does
    images = trust.images.assign(
        image_path=[_inside(run_path, p) for p in trust.images["image_path"]]
    )
    write_text_atomic(run_path / TRUST_IMAGES_FILE, images.to_csv(index=False))
    return write_text_atomic(run_path / TRUST_FILE, dump_json(trust.summary))


def _inside(run_path: Path, image_path: str) -> str:
    path, root = Path(image_path).resolve(), run_path.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(image_path)


def read_run_trust(run_path: str | Path) -> RunTrust | None:
    """The run's cached trust scores, or None if it has none; DatasetError if they are broken."""
    run_path = Path(run_path)
    path = run_path / TRUST_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        images = pd.read_csv(run_path / TRUST_IMAGES_FILE)
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"{path} or its {TRUST_IMAGES_FILE} cannot be read ({error}); recompute them with "
            f"'nextray trust {run_path} --overwrite'"
        ) from error
    if summary.get("format") != TRUST_FORMAT:
        raise DatasetError(
            f"{path} is not a {TRUST_FORMAT} file; recompute it with "
            f"'nextray trust {run_path} --overwrite'"
        )
    images["image_path"] = [resolve_image_path(run_path, p) for p in images["image_path"]]
    return RunTrust(summary=summary, images=images)


def scored_by(trust: RunTrust, run: Run) -> bool:
    """Whether the cached scores come from (one of) the checkpoint(s) that scored the run."""
    return trust.summary.get("checkpoint", {}).get("weights_sha256") in run.scorers
