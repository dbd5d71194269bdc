"""FracAtlas as published on figshare loads as it comes, to the same index and boxes as ours.

The published tree is rebuilt here from the bundled mini subset: its images, its own dataset.csv,
and COCO / YOLO / PASCAL VOC files written from the subset's boxes; the one file the derivative
left out (a truncated original) comes back as a truncated JPEG.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nextray_core.datasets import detect_dataset_kind, load_fracatlas, load_fracture_boxes
from nextray_core.errors import DatasetError

MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"
COMPARED = ["study_id", "patient_id", "region", "label", "split", "image_id", "hardware"]


def _boxes_in_pixels(boxes: pd.DataFrame, sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """The mini's fractional boxes as corner pixels of the ORIGINAL image size."""
    pixels = boxes.copy()
    width = boxes["image_id"].map(lambda i: sizes[i][0])
    height = boxes["image_id"].map(lambda i: sizes[i][1])
    pixels["x0"] = (boxes["x_center"] - boxes["width"] / 2) * width
    pixels["y0"] = (boxes["y_center"] - boxes["height"] / 2) * height
    pixels["w"], pixels["h"] = boxes["width"] * width, boxes["height"] * height
    pixels["image_w"], pixels["image_h"] = width, height
    return pixels


def build_published(root: Path, formats: tuple[str, ...] = ("coco", "yolo", "voc")) -> Path:
    """A FracAtlas/ archive tree (as unzipped from figshare) made from the mini subset."""
    archive = root / "FracAtlas"
    shutil.copytree(MINI / "images", archive / "images")
    shutil.copy(MINI / "dataset.csv", archive / "dataset.csv")
    manifest = pd.read_csv(MINI / "manifest_original.csv", dtype=str, keep_default_na=False)
    for path in manifest["path"]:
        if not (MINI / path).is_file():  # left out of the derivative: truncated originally
            whole = next((MINI / "images" / "Non_fractured").glob("*.jpg")).read_bytes()
            (archive / path).write_bytes(whole[: len(whole) // 2])
    measured = manifest[manifest["width"] != ""]  # the left-out file has no size
    names = measured["path"].str.split("/").str[-1]
    dims = zip(measured["width"].astype(int), measured["height"].astype(int), strict=True)
    sizes = dict(zip(names, dims, strict=True))
    boxes = pd.read_csv(MINI / "annotations" / "boxes_normalized.csv", dtype={"image_id": str})
    pixels = _boxes_in_pixels(boxes, sizes)
    notes = archive / "Annotations"
    if "coco" in formats:
        ids = {name: i for i, name in enumerate(sorted(set(boxes["image_id"])), start=1)}
        coco = {
            "images": [
                {"id": i, "file_name": n, "width": sizes[n][0], "height": sizes[n][1]}
                for n, i in ids.items()
            ],
            "annotations": [
                {
                    "id": k,
                    "image_id": ids[r.image_id],
                    "category_id": 0,
                    "bbox": [r.x0, r.y0, r.w, r.h],
                }
                for k, r in enumerate(pixels.itertuples())
            ],
            "categories": [{"id": 0, "name": "fractured"}],
        }
        (notes / "COCO JSON").mkdir(parents=True)
        (notes / "COCO JSON" / "COCO_fracture_masks.json").write_text(json.dumps(coco))
    if "yolo" in formats:
        (notes / "YOLO").mkdir(parents=True)
        for image in (archive / "images").glob("*/*.jpg"):  # empty files for no fracture
            rows = boxes[boxes["image_id"] == image.name]
            lines = [
                f"0 {r.x_center} {r.y_center} {r.width} {r.height}\n" for r in rows.itertuples()
            ]
            (notes / "YOLO" / f"{image.stem}.txt").write_text("".join(lines))
    if "voc" in formats:
        (notes / "PASCAL VOC").mkdir(parents=True)
        for name, group in pixels.groupby("image_id"):
            objects = "".join(
                f"<object><name>fractured</name><bndbox><xmin>{r.x0}</xmin><ymin>{r.y0}</ymin>"
                f"<xmax>{r.x0 + r.w}</xmax><ymax>{r.y0 + r.h}</ymax></bndbox></object>"
                for r in group.itertuples()
            )
            w, h = sizes[name]
            xml = (
                f"<annotation><filename>{name}</filename><size><width>{w}</width>"
                f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>"
            )
            (notes / "PASCAL VOC" / f"{Path(name).stem}.xml").write_text(xml)
    return root


def _sorted(boxes: pd.DataFrame) -> pd.DataFrame:
    return boxes.sort_values(list(boxes.columns)).reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 3])
def test_published_layout_indexes_like_the_derivative(tmp_path, seed):
    root = build_published(tmp_path)
    assert detect_dataset_kind(root) == "fracatlas"
    assert detect_dataset_kind(root / "FracAtlas") == "fracatlas"
    ours, published = load_fracatlas(MINI, seed=seed), load_fracatlas(root, seed=seed)
    pd.testing.assert_frame_equal(ours[COMPARED], published[COMPARED])
    # the duplicates by bytes, the truncated original left out, the folder's label kept
    assert published.attrs["skipped"] == {
        "missing_file": 0, "not_in_table": 0, "truncated": 1, "duplicate": 2,
    }  # fmt: skip
    assert published.set_index("image_id").loc["IMG0003298.jpg", "label"] == 1
    assert all(Path(p).is_file() for p in published["image_path"])


@pytest.mark.parametrize("formats", [("coco",), ("yolo",), ("voc",), ("coco", "yolo", "voc")])
def test_published_boxes_are_the_same_boxes(tmp_path, formats):
    ours = _sorted(load_fracture_boxes(MINI))
    published = _sorted(load_fracture_boxes(build_published(tmp_path, formats)))
    assert list(published["image_id"]) == list(ours["image_id"])
    pd.testing.assert_frame_equal(published, ours, check_exact=False, atol=1e-9, rtol=0)


def test_published_layout_names_what_is_missing(tmp_path):
    root = build_published(tmp_path, formats=())
    with pytest.raises(DatasetError, match=r"COCO JSON/COCO_fracture_masks\.json.*YOLO"):
        load_fracture_boxes(root)
    table = pd.read_csv(root / "FracAtlas" / "dataset.csv").drop(columns=["hip"])
    table.to_csv(root / "FracAtlas" / "dataset.csv", index=False)
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) \['hip'\]"):
        load_fracatlas(root)
    (root / "FracAtlas" / "dataset.csv").unlink()
    with pytest.raises(DatasetError, match=r"not a FracAtlas folder.*dataset\.csv"):
        load_fracatlas(root)
