"""Index a plain folder of radiographs sorted into normal/abnormal, for users without MURA.

Layout: ``root/normal/`` and ``root/abnormal/`` (any case; 'negative'/'positive' also work),
optionally one level of region folders above them (``root/wrist/normal/``). An image directly in
a class folder is a one-view study; a subfolder of a class folder is one study whose images are
its views. Only the folder names are read, so any number of images indexes quickly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from nextray_core.errors import DatasetError
from nextray_core.index import make_index, split_stratified

CLASS_FOLDERS: dict[str, int] = {"normal": 0, "negative": 0, "abnormal": 1, "positive": 1}
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
UNKNOWN_REGION = "unknown"
EXTRA_COLUMNS: tuple[str, ...] = ("view",)
EXPECTED_LAYOUT = (
    "expected root/normal/ and root/abnormal/ (or negative/ and positive/) holding images "
    "(.png .jpg .jpeg .dcm .dicom) or one subfolder per study, optionally inside region "
    "folders such as root/wrist/normal/"
)


def find_class_folders(root: str | Path) -> list[tuple[str, int, Path]]:
    """Return (region, label, folder) for each class folder in either accepted layout.

    Class folders directly in ``root`` mean no regions; otherwise each subfolder of ``root`` that
    holds class folders is a region. Mixing the two layouts is refused, since it is ambiguous.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    top = _class_folders(root, UNKNOWN_REGION)
    regional = [
        found
        for sub in _subfolders(root)
        if sub.name.lower() not in CLASS_FOLDERS
        for found in _class_folders(sub, sub.name.lower().removeprefix("xr_"))
    ]
    if top and regional:
        raise DatasetError(
            f"{root} mixes class folders with region folders that hold class folders; "
            f"use one layout: {EXPECTED_LAYOUT}"
        )
    return top or regional


def load_folder(
    root: str | Path, *, seed: int = 0, fractions: dict[str, float] | None = None
) -> pd.DataFrame:
    """Index a normal/abnormal folder; split by study (= patient), stratified by region, label."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; {EXPECTED_LAYOUT}")
    root = root.resolve()
    classes = find_class_folders(root)
    if not classes:
        raise DatasetError(f"no normal/abnormal folders in {root}; {EXPECTED_LAYOUT}")
    rows = []
    for region, label, folder in classes:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and _is_image(entry.name):
                rows.append(_row(root, Path(entry.path), Path(entry.path), region, label))
            elif entry.is_dir():
                rows += [
                    _row(root, Path(entry.path), image, region, label)
                    for image in _images_below(Path(entry.path))
                ]
    if not rows:
        raise DatasetError(f"the class folders in {root} hold no images; {EXPECTED_LAYOUT}")
    frame = pd.DataFrame(rows)
    frame["split"] = split_stratified(frame, fractions, seed=seed)
    return make_index(frame)


def _row(root: Path, study: Path, image: Path, region: str, label: int) -> dict[str, object]:
    study_id = study.relative_to(root).as_posix()
    return {
        "image_path": str(image),
        "study_id": study_id,
        "patient_id": study_id,
        "region": region,
        "label": label,
        "view": image.stem,
    }


def _class_folders(parent: Path, region: str) -> list[tuple[str, int, Path]]:
    return [
        (region, CLASS_FOLDERS[sub.name.lower()], sub)
        for sub in _subfolders(parent)
        if sub.name.lower() in CLASS_FOLDERS
    ]


def _subfolders(parent: Path) -> list[Path]:
    return sorted(
        Path(e.path) for e in os.scandir(parent) if e.is_dir() and not e.name.startswith(".")
    )


def _images_below(study: Path) -> list[Path]:
    """All images under one study folder (any depth), hidden files and folders skipped."""
    found = []
    for folder, dirs, files in os.walk(study):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if _is_image(f)]
    return found


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
