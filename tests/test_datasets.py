"""Dataset loaders: every source must become a valid, leak-free index table, or fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nextray_core.datasets import (
    DATASET_KINDS,
    detect_dataset_kind,
    load_dataset,
    load_folder,
    load_fracatlas,
    load_fracture_boxes,
    load_mura,
    make_synthetic_mura,
    validate_mura,
)
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.index import INDEX_COLUMNS, MURA_REGIONS

REPO = Path(__file__).resolve().parents[1]
FRACATLAS_MINI = REPO / "tests" / "data" / "fracatlas_mini"
FRACATLAS_FULL = REPO.parent / "shared" / "data" / "fracatlas"


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mura(tmp_path_factory.mktemp("mura"), seed=0)


@pytest.fixture
def mura_copy(mura_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic tree that a test may break."""
    shutil.copytree(mura_root / "MURA-v1.1", tmp_path / "MURA-v1.1")
    return tmp_path


def _csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path, format="PNG")  # content is not read by loaders


# --- MURA ---------------------------------------------------------------------------------------


def test_synthetic_mura_loads_with_the_generated_counts(mura_root: Path) -> None:
    frame = load_mura(mura_root)
    mura = mura_root / "MURA-v1.1"
    on_disk = sorted(str(p) for p in mura.rglob("*.png"))
    assert sorted(frame["image_path"]) == on_disk
    assert list(frame.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert {"source_split", "view"} <= set(frame.columns)
    for split, first, n in (("train", 1, 12), ("valid", 13, 8)):
        rows = frame[frame["source_split"] == split]
        assert len(rows) == len(_csv_lines(mura / f"{split}_image_paths.csv"))
        assert rows["study_id"].nunique() == len(_csv_lines(mura / f"{split}_labeled_studies.csv"))
        assert sorted(rows["patient_id"].unique()) == [
            f"patient{i:05d}" for i in range(first, first + n)
        ]
        assert set(rows["label"]) == {0, 1}
    assert set(frame.loc[frame["source_split"] == "train", "split"]) == {"train"}
    assert set(frame.loc[frame["source_split"] == "valid", "split"]) == {"val", "test"}
    assert set(frame["region"]) <= set(MURA_REGIONS) and frame["region"].nunique() >= 3
    # study ids are the folder relative to MURA-v1.1 and agree with the label and the path
    assert frame["study_id"].str.match(r"^(train|valid)/XR_[A-Z]+/patient\d{5}/study\d+_").all()
    positive = frame["study_id"].str.endswith("_positive")
    assert (frame["label"] == positive.astype(int)).all()
    assert frame["view"].str.fullmatch(r"image\d").all()


def test_synthetic_mura_is_deterministic(tmp_path: Path) -> None:
    a = make_synthetic_mura(tmp_path / "a", seed=3) / "MURA-v1.1"
    b = make_synthetic_mura(tmp_path / "b", seed=3) / "MURA-v1.1"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_synthetic_images_carry_a_learnable_signal(mura_root: Path) -> None:
    frame = load_mura(mura_root)
    brightest = frame["image_path"].map(lambda p: Image.open(p).getextrema()[1])
    assert brightest[frame["label"] == 1].min() > brightest[frame["label"] == 0].max()


def test_no_patient_in_two_splits(mura_root: Path) -> None:
    frame = load_mura(mura_root)
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    assert frame.groupby("study_id")["split"].nunique().max() == 1


def test_valid_split_is_seeded_by_patient(tmp_path: Path) -> None:
    root = make_synthetic_mura(tmp_path, patients_valid=40, seed=1)

    def test_patients(seed: int) -> set[str]:
        frame = load_mura(root, seed=seed)
        return set(frame.loc[frame["split"] == "test", "patient_id"])

    assert test_patients(0) == test_patients(0)
    assert test_patients(0) != test_patients(1)
    valid = load_mura(root).query("source_split == 'valid'")
    share = valid.groupby("split")["patient_id"].nunique() / valid["patient_id"].nunique()
    assert share["val"] == pytest.approx(2557 / 3197, abs=0.1)
    assert set(load_mura(root, val_fraction=1.0).query("source_split == 'valid'")["split"]) == {
        "val"
    }


def test_mura_folder_itself_is_accepted(mura_root: Path) -> None:
    pd.testing.assert_frame_equal(load_mura(mura_root / "MURA-v1.1"), load_mura(mura_root))


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_wrong_mura_root_names_the_fix(tmp_path: Path, where: str) -> None:
    root = tmp_path if where == "empty" else tmp_path / "nope"
    with pytest.raises(DatasetError, match=r"pass the folder that contains MURA-v1\.1"):
        load_mura(root)


def test_broken_tree_reports_every_problem_at_once(mura_copy: Path) -> None:
    mura = mura_copy / "MURA-v1.1"
    train_images = mura / "train_image_paths.csv"
    train_studies = mura / "train_labeled_studies.csv"
    lines = _csv_lines(train_images)
    # 1. an image listed in the CSV is deleted from disk
    deleted = lines[0]
    (mura_copy / deleted).unlink()
    # 2. a duplicated image row
    lines.append(lines[1])
    # 3. an unknown study type, complete with images and a label
    knee = "MURA-v1.1/train/XR_KNEE/patient00001/study1_positive"
    _write_png(mura_copy / knee / "image1.png")
    lines.append(f"{knee}/image1.png")
    # 4. a study with images but no label
    unlabelled = "MURA-v1.1/train/XR_HAND/patient00002/study9_negative"
    _write_png(mura_copy / unlabelled / "image1.png")
    lines.append(f"{unlabelled}/image1.png")
    # 5. a malformed row
    lines.append("not/a/mura/path.png")
    train_images.write_text("\n".join(lines) + "\n")
    # 6. a label flipped against its folder name
    studies = _csv_lines(train_studies)
    flipped_study, label = studies[0].rsplit(",", 1)
    studies[0] = f"{flipped_study},{1 - int(label)}"
    # 7. a labelled study without any image
    empty_study = "MURA-v1.1/train/XR_WRIST/patient00003/study7_positive/"
    studies.append(f"{empty_study},1")
    studies.append(f"{knee}/,1")
    train_studies.write_text("\n".join(studies) + "\n")

    with pytest.raises(DatasetError) as caught:
        load_mura(mura_copy)
    message = str(caught.value)
    expected = [
        "missing on disk",
        deleted,
        "duplicate row(s) in train_image_paths.csv",
        "unknown study type(s) XR_KNEE",
        "no label in train_labeled_studies.csv",
        unlabelled,
        "malformed row(s) in train_image_paths.csv",
        "disagree with the study folder name",
        flipped_study,
        "with no image",
        empty_study.rstrip("/"),
    ]
    assert [e for e in expected if e not in message] == []
    report = validate_mura(mura_copy)
    assert not report.ok and len(report.errors) == 7 and report.warnings == []
    assert report.summary() == message


def test_missing_csv_is_reported(mura_copy: Path) -> None:
    (mura_copy / "MURA-v1.1" / "valid_labeled_studies.csv").unlink()
    with pytest.raises(DatasetError, match=r"valid_labeled_studies\.csv is missing"):
        load_mura(mura_copy)


def test_unlisted_image_is_only_a_warning(mura_copy: Path) -> None:
    extra = mura_copy / "MURA-v1.1/valid/XR_HAND/patient00013/study5_negative/image1.png"
    _write_png(extra)
    (extra.parent / ".DS_Store").write_bytes(b"junk")
    report = validate_mura(mura_copy)
    assert report.ok and len(report.warnings) == 1 and "image1.png" in report.warnings[0]
    with pytest.warns(UserWarning, match="in no CSV"):
        frame = load_mura(mura_copy)
    assert str(extra) not in set(frame["image_path"])


def test_check_files_false_skips_the_disk(mura_copy: Path) -> None:
    first = _csv_lines(mura_copy / "MURA-v1.1" / "valid_image_paths.csv")[0]
    (mura_copy / first).unlink()
    with pytest.raises(DatasetError, match="missing on disk"):
        load_mura(mura_copy)
    assert str(mura_copy / first) in set(load_mura(mura_copy, check_files=False)["image_path"])


# --- FracAtlas ----------------------------------------------------------------------------------


def test_fracatlas_mini_drops_duplicates_and_trusts_the_folder() -> None:
    frame = load_fracatlas(FRACATLAS_MINI)
    manifest = pd.read_csv(FRACATLAS_MINI / "manifest_original.csv", dtype=str)
    duplicates = manifest.loc[manifest["duplicate_of"].notna(), "path"].str.split("/").str[-1]
    assert len(duplicates) == 2
    assert not set(duplicates) & set(frame["image_id"])
    originals = manifest["duplicate_of"].dropna().str.split("/").str[-1]
    assert set(originals) <= set(frame["image_id"])
    assert frame.attrs["skipped"] == {"missing_file": 1, "duplicate": 2}
    assert len(frame) == 22 and frame["label"].value_counts().to_dict() == {1: 11, 0: 11}
    # dataset.csv says 0 for IMG0003298, the folder (and its fracture box) say 1
    table = pd.read_csv(FRACATLAS_MINI / "dataset.csv").set_index("image_id")
    assert table.loc["IMG0003298.jpg", "fractured"] == 0
    assert frame.set_index("image_id").loc["IMG0003298.jpg", "label"] == 1
    assert (frame["study_id"] == frame["patient_id"]).all()
    assert set(frame["region"]) == {"hand", "leg", "hip", "shoulder", "mixed"}
    assert frame["hardware"].isin([0, 1]).all() and frame["hardware"].sum() >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fracatlas_split_is_stratified_and_covers_both_labels(seed: int) -> None:
    frame = load_fracatlas(FRACATLAS_MINI, seed=seed)
    assert frame.groupby("split")["label"].nunique().to_dict() == {"train": 2, "val": 2, "test": 2}
    assert frame["image_path"].is_unique
    assert frame.equals(load_fracatlas(FRACATLAS_MINI, seed=seed))


def test_fracture_boxes_are_fractions_on_fractured_images() -> None:
    boxes = load_fracture_boxes(FRACATLAS_MINI)
    assert list(boxes.columns) == ["image_id", "x_center", "y_center", "width", "height"]
    assert boxes.iloc[:, 1:].stack().between(0, 1).all()
    fractured = {p.name for p in (FRACATLAS_MINI / "images" / "Fractured").iterdir()}
    assert set(boxes["image_id"]) == fractured


def test_fracatlas_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"manifest_original\.csv"):
        load_fracatlas(tmp_path)


@pytest.mark.skipif(not FRACATLAS_FULL.is_dir(), reason="full FracAtlas not present")
def test_full_fracatlas_counts() -> None:
    frame = load_fracatlas(FRACATLAS_FULL)
    manifest = pd.read_csv(FRACATLAS_FULL / "manifest_original.csv", dtype=str)
    present = manifest[manifest["path"].map(lambda p: (FRACATLAS_FULL / p).is_file())]
    duplicated = present[present["duplicate_of"].notna()]
    fractured_dups = int(duplicated["path"].str.startswith("images/Fractured/").sum())
    assert len(present) == 4024 and len(manifest) - len(present) == 59
    labels = frame["label"].value_counts().to_dict()
    assert labels[1] == 717 - fractured_dups == 713
    assert labels[0] == 3307 - (len(duplicated) - fractured_dups) == 3297
    assert len(frame) == 4024 - len(duplicated)
    assert frame.attrs["skipped"] == {"missing_file": 59, "duplicate": len(duplicated)}
    sizes = frame["split"].value_counts(normalize=True)
    assert sizes["train"] == pytest.approx(0.7, abs=0.01)
    assert sizes["test"] == pytest.approx(0.15, abs=0.01)
    per_stratum = frame.groupby(["region", "label"])["split"].nunique()
    assert (per_stratum == 3).all()  # every body part x label appears in train, val and test


# --- plain folder -------------------------------------------------------------------------------


def test_folder_without_regions(tmp_path: Path) -> None:
    _write_png(tmp_path / "Normal" / "a.png")
    _write_png(tmp_path / "Normal" / "b.JPG")
    _write_png(tmp_path / "ABNORMAL" / "c.png")
    (tmp_path / "ABNORMAL" / "notes.txt").write_text("not an image")
    (tmp_path / "ABNORMAL" / ".hidden.png").write_bytes(b"")
    frame = load_folder(tmp_path)
    assert sorted(frame["study_id"]) == ["ABNORMAL/c.png", "Normal/a.png", "Normal/b.JPG"]
    assert frame.set_index("study_id")["label"].to_dict() == {
        "ABNORMAL/c.png": 1,
        "Normal/a.png": 0,
        "Normal/b.JPG": 0,
    }
    assert set(frame["region"]) == {"unknown"}


def test_folder_with_regions_and_study_subfolders(tmp_path: Path) -> None:
    for view in ("view1.png", "view2.png", "sub/view3.dcm"):
        _write_png(tmp_path / "wrist" / "positive" / "study1" / view)
    _write_png(tmp_path / "XR_ELBOW" / "negative" / "x.jpeg")
    _write_png(tmp_path / "XR_ELBOW" / "abnormal" / "y.png")
    (tmp_path / "docs").mkdir()
    frame = load_folder(tmp_path, seed=4)
    study = frame[frame["study_id"] == "wrist/positive/study1"]
    assert len(study) == 3 and study["split"].nunique() == 1 and set(study["label"]) == {1}
    assert set(study["view"]) == {"view1", "view2", "view3"}
    assert frame.set_index("study_id")["region"].to_dict() == {
        "wrist/positive/study1": "wrist",
        "XR_ELBOW/negative/x.jpeg": "elbow",
        "XR_ELBOW/abnormal/y.png": "elbow",
    }
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


@pytest.mark.parametrize("layout", ["empty", "loose_images", "empty_classes", "mixed"])
def test_folder_bad_layout_names_the_expected_one(tmp_path: Path, layout: str) -> None:
    if layout == "loose_images":
        _write_png(tmp_path / "a.png")
    elif layout == "empty_classes":
        (tmp_path / "normal").mkdir()
        (tmp_path / "abnormal").mkdir()
    elif layout == "mixed":
        _write_png(tmp_path / "normal" / "a.png")
        _write_png(tmp_path / "wrist" / "abnormal" / "b.png")
    with pytest.raises(DatasetError, match="expected root/normal/ and root/abnormal/"):
        load_folder(tmp_path)


# --- dispatch and the index CSV -----------------------------------------------------------------


def test_detect_and_load_each_kind(mura_root: Path, tmp_path: Path) -> None:
    _write_png(tmp_path / "folder" / "hand" / "normal" / "a.png")
    _write_png(tmp_path / "folder" / "hand" / "abnormal" / "b.png")
    index_csv = tmp_path / "index.csv"
    load_fracatlas(FRACATLAS_MINI).to_csv(index_csv, index=False)
    cases = {
        mura_root: "mura",
        mura_root / "MURA-v1.1": "mura",
        FRACATLAS_MINI: "fracatlas",
        tmp_path / "folder": "folder",
        index_csv: "index",
    }
    for root, kind in cases.items():
        assert detect_dataset_kind(root) == kind
        frame = load_dataset(kind, root)
        assert list(frame.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS) and len(frame)
    assert set(DATASET_KINDS) == set(cases.values())


def test_detect_unknown_layout_lists_the_accepted_ones(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match=r"MURA-v1\.1.*FracAtlas.*normal/ and abnormal/.*\.csv"):
        detect_dataset_kind(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        detect_dataset_kind(tmp_path / "nope")


def test_unknown_kind_lists_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mura, fracatlas, folder, index"):
        load_dataset("chexpert", tmp_path)


@pytest.mark.parametrize("source", ["mura", "fracatlas"])
def test_index_csv_round_trip(mura_root: Path, tmp_path: Path, source: str) -> None:
    original = load_dataset(source, mura_root if source == "mura" else FRACATLAS_MINI)
    path = tmp_path / "index.csv"
    original.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_dataset("index", path), original)


def test_index_csv_relative_paths_and_leaks(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "image_path": ["img/a.png", "img/b.png"],
            "study_id": ["s1", "s2"],
            "patient_id": ["00007", "00007"],
            "region": ["wrist", "wrist"],
            "label": [0, 1],
            "split": ["train", "train"],
        }
    )
    rows.to_csv(tmp_path / "ok.csv", index=False)
    frame = load_dataset("index", tmp_path / "ok.csv")
    assert frame["image_path"].tolist() == [
        str(tmp_path / "img/a.png"),
        str(tmp_path / "img/b.png"),
    ]
    assert frame["patient_id"].tolist() == ["00007", "00007"]  # ids stay text, zeros kept
    rows.assign(split=["train", "test"]).to_csv(tmp_path / "leak.csv", index=False)
    with pytest.raises(DatasetError, match="more than one split"):
        load_dataset("index", tmp_path / "leak.csv")
    rows.drop(columns="region").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DatasetError, match="region"):
        load_dataset("index", tmp_path / "short.csv")
