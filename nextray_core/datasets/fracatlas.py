"""Load FracAtlas (fracture / no fracture, CC BY 4.0) into the index table, and its fracture boxes.

Two layouts load, to the same index for the same images:

- the archive as published on figshare: ``images/Fractured``, ``images/Non_fractured``,
  ``dataset.csv`` and ``Annotations/`` (``COCO JSON/COCO_fracture_masks.json``, ``YOLO/*.txt``,
  ``PASCAL VOC/*.xml``), the folder itself or one that holds ``FracAtlas/``;
- our derivative in ``shared/data/fracatlas``: the same folders plus a manifest of the ORIGINAL
  files (``manifest_original.csv``) and ``annotations/boxes_normalized.csv``.

The data's quirks decide the rules: some originals are truncated JPEGs (left out), 15 files
duplicate others byte for byte (they would leak across splits; the first by path is kept), and
``dataset.csv`` mislabels one fractured image, so the label comes from the folder. There are no
patient ids, so each image is its own study and patient, and the split is made here, after
de-duplication.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from nextray_core.errors import DatasetError
from nextray_core.index import make_index, split_stratified

MANIFEST = "manifest_original.csv"
TABLE = "dataset.csv"
BOXES = "annotations/boxes_normalized.csv"
ARCHIVE_FOLDER = "FracAtlas"
LABEL_FOLDERS: dict[str, int] = {"Fractured": 1, "Non_fractured": 0}
BODY_PARTS: tuple[str, ...] = ("hand", "leg", "hip", "shoulder")
EXTRA_COLUMNS: tuple[str, ...] = ("image_id", "hardware")
BOX_COLUMNS: list[str] = ["image_id", "x_center", "y_center", "width", "height"]
# Annotation sub-folders of the published archive, by their names without case or spaces
_COCO_DIRS, _YOLO_DIRS, _VOC_DIRS = ("cocojson", "coco"), ("yolo",), ("pascalvoc", "voc")
_LAYOUT = (
    "a FracAtlas folder holds images/Fractured/, images/Non_fractured/ and dataset.csv, with "
    "Annotations/ (COCO JSON, YOLO or PASCAL VOC boxes) as published on figshare, or with "
    "manifest_original.csv and annotations/boxes_normalized.csv (our derivative)"
)


def find_fracatlas_root(root: str | Path) -> Path | None:
    """The FracAtlas folder at ``root`` (or its ``FracAtlas/`` sub-folder), or None."""
    root = Path(root).expanduser()
    for candidate in (root, root / ARCHIVE_FOLDER):
        if (candidate / "images" / "Fractured").is_dir() and (
            (candidate / MANIFEST).is_file() or (candidate / TABLE).is_file()
        ):
            return candidate.resolve()
    return None


def load_fracatlas(
    root: str | Path, *, seed: int = 0, fractions: dict[str, float] | None = None
) -> pd.DataFrame:
    """Index FracAtlas: files that decode, duplicates dropped, label from the folder.

    Split by image (= study = patient), stratified by body part and label. What was left out is
    counted in ``frame.attrs['skipped']`` ({'missing_file': n, 'duplicate': n}, plus
    'truncated' and 'not_in_table' for the published layout).
    """
    root = _check_root(root)
    if (root / MANIFEST).is_file():
        rows, skipped = _rows_from_manifest(root)
    else:
        rows, skipped = _rows_from_archive(root)
    if rows.empty:
        raise DatasetError(f"no readable FracAtlas image found under {root}; {_LAYOUT}")
    frame = pd.DataFrame(
        {
            "image_path": str(root) + "/" + rows["path"],
            "study_id": rows["path"].map(lambda p: Path(p).stem),
            "region": rows["body_part"].str.strip().str.lower(),
            "label": rows["path"].str.split("/").str[1].map(LABEL_FOLDERS),
            "image_id": rows["path"].map(lambda p: Path(p).name),
            "hardware": pd.to_numeric(rows["hardware"], errors="coerce").fillna(0).astype("int64"),
        }
    )
    frame["patient_id"] = frame["study_id"]
    frame["split"] = split_stratified(frame, fractions, seed=seed)
    index = make_index(frame)
    index.attrs["skipped"] = skipped
    return index


def _rows_from_manifest(root: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Our derivative: manifest rows whose file exists, minus the listed duplicates."""
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
    if not exists.any():
        raise DatasetError(f"none of the files listed in {root / MANIFEST} exist; {_LAYOUT}")
    skipped = {"missing_file": int((~exists).sum()), "duplicate": int(duplicate.sum())}
    return manifest[exists & ~duplicate].reset_index(drop=True), skipped


def _rows_from_archive(root: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The published archive: dataset.csv rows and the files on disk, checked here.

    A file is left out when it is truncated (it does not decode) or repeats an earlier file
    byte for byte: the rules the derivative's manifest recorded, applied to the originals.
    """
    table = pd.read_csv(root / TABLE, dtype=str, keep_default_na=False)
    needed = {"image_id", "hardware", "mixed", *BODY_PARTS}
    if not needed <= set(table.columns):
        raise DatasetError(
            f"{root / TABLE} lacks the column(s) {sorted(needed - set(table.columns))}; it "
            "should be FracAtlas's own dataset.csv (image_id, hand, leg, hip, shoulder, mixed, "
            "hardware, ...)"
        )
    flags_of = table.drop_duplicates("image_id").set_index("image_id").to_dict("index")
    on_disk = sorted(_files_on_disk(root))
    names = [Path(p).name for p in on_disk]
    listed = [name in flags_of for name in names]
    skipped = {
        "missing_file": len(set(flags_of) - set(names)),
        "not_in_table": listed.count(False),
        "truncated": 0,
        "duplicate": 0,
    }
    kept, seen = [], set()
    for path, name, known in zip(on_disk, names, listed, strict=True):
        if not known:
            continue
        data = (root / path).read_bytes()
        if _is_truncated(data):
            skipped["truncated"] += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        flags = flags_of[name]
        kept.append({"path": path, "body_part": _body_part(flags), "hardware": flags["hardware"]})
    return pd.DataFrame(kept, columns=["path", "body_part", "hardware"]), skipped


def _body_part(flags: dict[str, str]) -> str:
    """dataset.csv's one-hot columns as one name: 'mixed' when flagged or when several are."""
    parts = [part for part in BODY_PARTS if flags[part].strip() == "1"]
    if flags["mixed"].strip() == "1" or len(parts) > 1:
        return "mixed"
    return parts[0] if parts else "unknown"


def _is_truncated(data: bytes) -> bool:
    """True for a JPEG cut short. Files that end in the EOI marker are whole (the fast path);
    for any other, a strict decode decides."""
    if data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return True
    return False


# ---------------------------------------------------------------- boxes
def load_fracture_boxes(root: str | Path) -> pd.DataFrame:
    """Fracture boxes: image_id (file name), x_center, y_center, width, height (image fractions).

    From the derivative's boxes_normalized.csv, else from the published archive's annotations:
    COCO JSON first, then YOLO, then PASCAL VOC.
    """
    root = _check_root(root)
    path = root / BOXES
    if path.is_file():
        boxes = pd.read_csv(path, dtype={"image_id": str})
        if missing := [c for c in BOX_COLUMNS if c not in boxes.columns]:
            raise DatasetError(f"{path} lacks the column(s) {missing}; expected {BOX_COLUMNS}")
    else:
        boxes, path = _boxes_from_archive(root)
    coords = boxes[BOX_COLUMNS[1:]]
    if ((coords < 0) | (coords > 1)).any().any() or coords.isna().any().any():
        raise DatasetError(
            f"{path} has box values outside 0-1; it must hold fractions of the image"
        )
    return boxes[BOX_COLUMNS].reset_index(drop=True)


def _boxes_from_archive(root: Path) -> tuple[pd.DataFrame, Path]:
    folders = _annotation_folders(root)
    if coco := folders.get("coco"):
        files = sorted(coco.glob("*.json"))
        preferred = [f for f in files if "fracture" in f.name.lower()] or files
        if preferred:
            return _coco_boxes(preferred[0]), preferred[0]
    for kind, pattern, read in (("yolo", "*.txt", _yolo_boxes), ("voc", "*.xml", _voc_boxes)):
        folder = folders.get(kind)
        files = sorted(folder.glob(pattern)) if folder else []
        if files:
            return read(files), folder
    raise DatasetError(
        f"no fracture boxes found under {root}: expected Annotations/COCO JSON/"
        "COCO_fracture_masks.json, Annotations/YOLO/*.txt or Annotations/PASCAL VOC/*.xml "
        f"(as published on figshare), or {BOXES} (our derivative)"
    )


def _annotation_folders(root: Path) -> dict[str, Path]:
    """{'coco'|'yolo'|'voc': folder} among Annotations/'s sub-folders, names matched loosely."""
    found: dict[str, Path] = {}
    for parent in (root / "Annotations", root / "annotations"):
        if not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            key = child.name.lower().replace(" ", "").replace("_", "")
            for kind, names in (("coco", _COCO_DIRS), ("yolo", _YOLO_DIRS), ("voc", _VOC_DIRS)):
                if child.is_dir() and key in names:
                    found.setdefault(kind, child)
    return found


def _coco_boxes(path: Path) -> pd.DataFrame:
    """COCO ``bbox`` [x, y, w, h] in pixels of ``images[].width/height`` -> fractions."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images = {image["id"]: image for image in coco["images"]}
        rows = []
        for note in coco["annotations"]:
            image = images[note["image_id"]]
            x, y, w, h = (float(v) for v in note["bbox"])
            width, height = float(image["width"]), float(image["height"])
            rows.append(
                (image["file_name"], (x + w / 2) / width, (y + h / 2) / height,
                 w / width, h / height)
            )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path} is not a readable COCO annotation file ({error!r})") from error
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


def _yolo_boxes(files: list[Path]) -> pd.DataFrame:
    """YOLO lines ``class x_center y_center width height`` (fractions); one file per image."""
    rows = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts[1:5]]
            except ValueError:
                values = []
            if len(parts) < 5 or len(values) != 4:
                raise DatasetError(
                    f"{path} line {number}: expected 'class x_center y_center width height'"
                )
            rows.append((path.stem + ".jpg", *values))
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


def _voc_boxes(files: list[Path]) -> pd.DataFrame:
    """PASCAL VOC ``object/bndbox`` corners in pixels of ``size`` -> fractions."""
    rows = []
    for path in files:
        try:
            tree = ET.parse(path).getroot()
            name = tree.findtext("filename") or path.stem + ".jpg"
            width = float(tree.findtext("size/width"))
            height = float(tree.findtext("size/height"))
            for box in tree.iter("bndbox"):
                x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                rows.append(
                    (Path(name).name, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                     (x1 - x0) / width, (y1 - y0) / height)
                )  # fmt: skip
        except (ET.ParseError, TypeError, ValueError) as error:
            raise DatasetError(f"{path} is not a readable PASCAL VOC file ({error!r})") from error
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


def _check_root(root: str | Path) -> Path:
    found = find_fracatlas_root(root)
    if found is None:
        raise DatasetError(f"{Path(root).expanduser()} is not a FracAtlas folder; {_LAYOUT}")
    return found


def _files_on_disk(root: Path) -> set[str]:
    """Relative paths (images/<label folder>/<file>) of the files in the two label folders."""
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
