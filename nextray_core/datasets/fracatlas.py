"""Load FracAtlas (fracture / no fracture, CC BY 4.0) into the index table, and its fracture boxes.

The derivative in ``shared/data/fracatlas`` keeps the original layout plus a manifest of the
ORIGINAL files. Its quirks decide the rules here: some listed files were left out (truncated
originals), 15 files duplicate others (they would leak across splits), and ``dataset.csv``
mislabels one fractured image, so the label comes from the folder. There are no patient ids, so
each image is its own study and patient, and the split is made here, after de-duplication.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from nextray_core.errors import DatasetError
from nextray_core.index import make_index, split_stratified

MANIFEST = "manifest_original.csv"
BOXES = "annotations/boxes_normalized.csv"
LABEL_FOLDERS: dict[str, int] = {"Fractured": 1, "Non_fractured": 0}
EXTRA_COLUMNS: tuple[str, ...] = ("image_id", "hardware")
_LAYOUT = (
    "a FracAtlas folder holds manifest_original.csv, dataset.csv, images/Fractured/, "
    "images/Non_fractured/ and annotations/boxes_normalized.csv"
)


def load_fracatlas(
    root: str | Path, *, seed: int = 0, fractions: dict[str, float] | None = None
) -> pd.DataFrame:
    """Index FracAtlas: manifest rows whose file exists, duplicates dropped, label from the folder.

    Split by image (= study = patient), stratified by body part and label. What was left out is
    counted in ``frame.attrs['skipped']`` ({'missing_file': n, 'duplicate': n}).
    """
    root = _check_root(root)
    manifest = pd.read_csv(root / MANIFEST, dtype=str, keep_default_na=False)
    needed = {"path", "body_part", "hardware", "duplicate_of"}
    if not needed <= set(manifest.columns):
        raise DatasetError(
            f"{root / MANIFEST} lacks the column(s) {sorted(needed - set(manifest.columns))}; "
            "use the manifest that ships with the FracAtlas derivative"
        )
    on_disk = _files_on_disk(root)
    exists = manifest["path"].map(on_disk.__contains__).astype(bool)
    duplicate = exists & (manifest["duplicate_of"].str.strip() != "")
    rows = manifest[exists & ~duplicate]

    folder = rows["path"].str.split("/").str[1]
    frame = pd.DataFrame(
        {
            "image_path": str(root) + "/" + rows["path"],
            "study_id": rows["path"].map(lambda p: Path(p).stem),
            "region": rows["body_part"].str.strip().str.lower(),
            "label": folder.map(LABEL_FOLDERS),
            "image_id": rows["path"].map(lambda p: Path(p).name),
            "hardware": pd.to_numeric(rows["hardware"], errors="coerce").fillna(0).astype("int64"),
        }
    )
    frame["patient_id"] = frame["study_id"]
    if frame.empty:
        raise DatasetError(f"none of the files listed in {root / MANIFEST} exist; {_LAYOUT}")
    frame["split"] = split_stratified(frame, fractions, seed=seed)
    index = make_index(frame)
    index.attrs["skipped"] = {
        "missing_file": int((~exists).sum()),
        "duplicate": int(duplicate.sum()),
    }
    return index


def load_fracture_boxes(root: str | Path) -> pd.DataFrame:
    """Fracture boxes: image_id (file name), x_center, y_center, width, height (image fractions)."""
    root = _check_root(root)
    path = root / BOXES
    if not path.is_file():
        raise DatasetError(f"{path} is missing; {_LAYOUT}")
    boxes = pd.read_csv(path, dtype={"image_id": str})
    columns = ["image_id", "x_center", "y_center", "width", "height"]
    if missing := [c for c in columns if c not in boxes.columns]:
        raise DatasetError(f"{path} lacks the column(s) {missing}; expected {columns}")
    coords = boxes[columns[1:]]
    if ((coords < 0) | (coords > 1)).any().any() or coords.isna().any().any():
        raise DatasetError(
            f"{path} has box values outside 0-1; it must hold fractions of the image"
        )
    return boxes[columns].reset_index(drop=True)


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not (root / MANIFEST).is_file() or not (root / "images" / "Fractured").is_dir():
        raise DatasetError(f"{root} is not a FracAtlas folder; {_LAYOUT}")
    return root.resolve()


def _files_on_disk(root: Path) -> set[str]:
    """Relative paths (as in the manifest) of the files in the two label folders."""
    found: set[str] = set()
    for name in LABEL_FOLDERS:
        folder = root / "images" / name
        if folder.is_dir():
            found.update(
                f"images/{name}/{e.name}"
                for e in os.scandir(folder)
                if e.is_file() and not e.name.startswith(".")
            )
    return found
