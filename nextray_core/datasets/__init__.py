"""Dataset loaders: each turns one kind of source into the index table (nextray_core.index).

``load_dataset(kind, root)`` is the one entry point the CLI and the dashboard use;
``detect_dataset_kind(root)`` guesses the kind from the folder layout.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nextray_core.datasets.folder import find_class_folders, load_folder
from nextray_core.datasets.fracatlas import (
    find_fracatlas_root,
    load_fracatlas,
    load_fracture_boxes,
)
from nextray_core.datasets.mura import MURA_DIRNAME, MuraReport, load_mura, validate_mura
from nextray_core.datasets.synthetic import make_synthetic_mura
from nextray_core.datasets.tasks import FRACATLAS_TASK, MURA_TASK, Task, dataset_task
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.index import INDEX_COLUMNS, make_index
from nextray_core.options import DATASET_KINDS

ACCEPTED_LAYOUTS = (
    "a folder containing MURA-v1.1 (or MURA-v1.1 itself); a FracAtlas folder "
    "(images/Fractured/ with dataset.csv as published, or with manifest_original.csv); a "
    "folder with normal/ and abnormal/ "
    "subfolders (optionally inside region folders such as wrist/); or an index .csv file"
)

__all__ = [
    "DATASET_KINDS",
    "FRACATLAS_TASK",
    "MURA_TASK",
    "MuraReport",
    "Task",
    "dataset_task",
    "detect_dataset_kind",
    "load_dataset",
    "load_folder",
    "load_fracatlas",
    "load_fracture_boxes",
    "load_index_csv",
    "load_mura",
    "make_synthetic_mura",
    "validate_mura",
]


def load_dataset(kind: str, root: str | Path, *, seed: int = 0) -> pd.DataFrame:
    """Build the index table for ``root`` with the loader for ``kind`` (see DATASET_KINDS)."""
    if kind == "mura":
        return load_mura(root, seed=seed)
    if kind == "fracatlas":
        return load_fracatlas(root, seed=seed)
    if kind == "folder":
        return load_folder(root, seed=seed)
    if kind == "index":
        return load_index_csv(root)
    raise ConfigError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")


def detect_dataset_kind(root: str | Path) -> str:
    """Name the kind of dataset at ``root`` from its layout, or say which layouts are accepted."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root} does not exist; pass {ACCEPTED_LAYOUTS}")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "index"
        raise DatasetError(f"{root} is a file but not a .csv index; pass {ACCEPTED_LAYOUTS}")
    if root.name == MURA_DIRNAME or (root / MURA_DIRNAME).is_dir():
        return "mura"
    if find_fracatlas_root(root) is not None:
        return "fracatlas"
    if find_class_folders(root):
        return "folder"
    raise DatasetError(f"cannot tell what dataset {root} holds; pass {ACCEPTED_LAYOUTS}")


def load_index_csv(path: str | Path) -> pd.DataFrame:
    """Read an index table saved with ``frame.to_csv(path, index=False)`` and validate it.

    Relative image paths are resolved against the CSV's folder, so an index can travel with
    its images.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path} is not a file; pass an index .csv written by nextray")
    text_columns = [c for c in INDEX_COLUMNS if c != "label"]
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text_columns, str), keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{path} is not a readable index CSV ({error})") from error
    if "label" in frame.columns:
        labels = pd.to_numeric(frame["label"], errors="coerce")
        bad = labels.isna() | (labels % 1 != 0)
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 2
            raise DatasetError(f"{path} line {line}: label must be 0, 1 or -1")
        frame["label"] = labels.astype("int64")
    if "image_path" in frame.columns:
        base = path.resolve().parent
        frame["image_path"] = [
            p if Path(p).is_absolute() else str(base / p) for p in frame["image_path"]
        ]
    return make_index(frame)
