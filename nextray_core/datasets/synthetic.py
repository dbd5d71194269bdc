"""A tiny MURA-shaped tree of synthetic radiographs, so tests and demos never need real MURA.

The folder names, CSV shapes and patient numbering copy MURA v1.1 exactly, so the real loader
reads it unchanged. Abnormal images carry a bright blob on a noisy "bone" background and normal
images do not: a small CNN learns the difference in a few steps, which makes training tests honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nextray_core.datasets.mura import MURA_DIRNAME
from nextray_core.errors import DatasetError
from nextray_core.index import MURA_REGIONS

# Three regions by default: with the default 8 valid patients every region stratum then holds
# 2-3 patients, so the patient-level val/test split of the valid set leaves a non-empty test split.
DEFAULT_REGIONS: tuple[str, ...] = ("elbow", "hand", "wrist")


def make_synthetic_mura(
    dest: str | Path,
    *,
    patients_train: int = 12,
    patients_valid: int = 8,
    image_size: int = 64,
    seed: int = 0,
    regions: Sequence[str] = DEFAULT_REGIONS,
) -> Path:
    """Write ``dest/MURA-v1.1`` (tree + the four CSVs) deterministically for ``seed``; return dest.

    Train patients are numbered from 00001 and valid patients continue after them, as in MURA.
    Each patient has 1-3 studies (its first in ``regions[i % len(regions)]``, labels alternating
    between a patient's studies and between patients, so both labels occur), each study 1-3
    views. Images are 8-bit grayscale PNGs whose longer side is ``image_size``.
    """
    unknown = sorted(set(regions) - set(MURA_REGIONS))
    if unknown or not regions:
        raise DatasetError(f"synthetic regions must be among {MURA_REGIONS}, got {list(regions)}")
    if patients_train < 1 or patients_valid < 1 or image_size < 16:
        raise DatasetError("need at least one patient per split and an image_size of 16 or more")
    dest = Path(dest)
    mura = dest / MURA_DIRNAME
    if mura.exists() and any(mura.iterdir()):
        raise DatasetError(f"{mura} already exists and is not empty; choose an empty destination")

    rng = np.random.default_rng(seed)
    first_patient = {"train": 1, "valid": patients_train + 1}
    counts = {"train": patients_train, "valid": patients_valid}
    for split in ("train", "valid"):
        image_rows: list[str] = []
        study_rows: list[str] = []
        for i in range(counts[split]):
            patient = f"patient{first_patient[split] + i:05d}"
            studies_per_region: dict[str, int] = {}
            for k in range(int(rng.integers(1, 4))):
                region = regions[i % len(regions)] if k == 0 else str(rng.choice(list(regions)))
                studies_per_region[region] = studies_per_region.get(region, 0) + 1
                label = (i + k) % 2
                study = (
                    f"{MURA_DIRNAME}/{split}/XR_{region.upper()}/{patient}/"
                    f"study{studies_per_region[region]}_{'positive' if label else 'negative'}"
                )
                (dest / study).mkdir(parents=True)
                study_rows.append(f"{study}/,{label}")
                for view in range(1, int(rng.integers(1, 4)) + 1):
                    path = f"{study}/image{view}.png"
                    Image.fromarray(_radiograph(rng, image_size, bool(label))).save(dest / path)
                    image_rows.append(path)
        (mura / f"{split}_image_paths.csv").write_text("\n".join(image_rows) + "\n")
        (mura / f"{split}_labeled_studies.csv").write_text("\n".join(study_rows) + "\n")
    return dest


def _radiograph(rng: np.random.Generator, size: int, abnormal: bool) -> np.ndarray:
    """A noisy background with a vertical 'bone' band; abnormal adds a bright Gaussian blob."""
    short = round(float(size * rng.uniform(0.75, 1.0)))
    height, width = (size, short) if rng.random() < 0.5 else (short, size)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 40.0 + 15.0 * rng.standard_normal((height, width))
    centre, half = rng.uniform(0.35, 0.65) * width, rng.uniform(0.08, 0.15) * width
    image += 70.0 * (np.abs(x - centre) < half)
    if abnormal:
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        radius = rng.uniform(0.06, 0.12) * size
        image += 150.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * radius**2))
    return np.clip(image, 0, 255).astype(np.uint8)
