"""Load a user's copy of Stanford MURA v1.1 into the index table, after checking it whole.

MURA's four CSVs are the source of truth; the folder tree is checked against them. Every problem
is collected into one ``MuraReport`` so a user fixes their copy in one pass instead of one error
at a time. Only the CSVs and one walk of the tree are read (no image is opened), so the full
release (40k images) loads in about a second.

The public valid set is split BY PATIENT into 'val' and 'test': the neXt-Ray report split its
images at random (2,557 / 640), which put views of one study on both sides of the split.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nextray_core.errors import ConfigError, DatasetError
from nextray_core.index import MURA_REGIONS, make_index, split_by_group

MURA_DIRNAME = "MURA-v1.1"
SOURCE_SPLITS: tuple[str, ...] = ("train", "valid")
NEXTRAY_VAL_FRACTION = 2557 / 3197  # the neXt-Ray report's val share of the public valid set
STUDY_TYPES: tuple[str, ...] = tuple(f"XR_{r.upper()}" for r in MURA_REGIONS)
EXTRA_COLUMNS: tuple[str, ...] = ("source_split", "view")

_STUDY_DIR = (
    r"(?P<study_dir>MURA-v1\.1/(?P<split>train|valid)/(?P<study_type>XR_[A-Z]+)"
    r"/(?P<patient>patient\d+)/study\d+_(?P<folder_label>positive|negative))"
)
_IMAGE_RE = re.compile(rf"^{_STUDY_DIR}/(?P<view>[^/]+)\.png$")
_STUDY_RE = re.compile(rf"^{_STUDY_DIR}/?$")
_EXAMPLES = 3


@dataclass
class MuraReport:
    """Everything wrong (errors) or odd (warnings) with one MURA copy, plus what it holds."""

    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One readable report: what was found, every problem, every warning, and the fix."""
        held = "; ".join(
            f"{s}: {self.counts.get(f'{s}_images', 0):,} images in "
            f"{self.counts.get(f'{s}_studies', 0):,} studies of "
            f"{self.counts.get(f'{s}_patients', 0):,} patients"
            for s in SOURCE_SPLITS
        )
        lines = [
            f"MURA copy at {self.root / MURA_DIRNAME}: {len(self.errors)} problem(s), "
            f"{len(self.warnings)} warning(s) ({held})"
        ]
        lines += [f"  problem: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.errors:
            lines.append(
                "Fix the rows or files listed above (or unpack a fresh copy of MURA-v1.1) "
                "and load again."
            )
        return "\n".join(lines)


def resolve_mura_root(root: str | Path) -> Path:
    """Return the folder that contains ``MURA-v1.1``; accept the ``MURA-v1.1`` folder itself."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root} does not exist; pass the folder that contains MURA-v1.1")
    if root.name == MURA_DIRNAME and root.is_dir():
        return root.resolve().parent
    if (root / MURA_DIRNAME).is_dir():
        return root.resolve()
    raise DatasetError(
        f"no {MURA_DIRNAME} folder in {root}; pass the folder that contains {MURA_DIRNAME}"
    )


def validate_mura(root: str | Path) -> MuraReport:
    """Check a MURA copy's CSVs against each other and against the tree; never raises on content."""
    return _scan(resolve_mura_root(root), check_files=True)[0]


def load_mura(
    root: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = NEXTRAY_VAL_FRACTION,
    check_files: bool = True,
) -> pd.DataFrame:
    """Index a MURA copy: public train -> 'train', public valid -> 'val'/'test' by patient.

    ``check_files=False`` skips the walk of the tree (the CSVs are still checked), for slow disks.
    Raises ``DatasetError`` with the full report if the copy has any problem; warnings (images on
    disk that no CSV lists) are issued as ``UserWarning`` and kept in ``frame.attrs['warnings']``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    report, images = _scan(resolve_mura_root(root), check_files=check_files)
    if not report.ok:
        raise DatasetError(report.summary())
    for message in report.warnings:
        warnings.warn(f"MURA: {message}", UserWarning, stacklevel=2)

    frame = pd.DataFrame(
        {
            "image_path": str(report.root) + "/" + images["path"],
            "study_id": images["study_dir"].str.removeprefix(f"{MURA_DIRNAME}/"),
            "patient_id": images["patient"],
            "region": images["study_type"].str.removeprefix("XR_").str.lower(),
            "label": images["label"].astype("int64"),
            "split": "train",
            "source_split": images["split"],
            "view": images["view"],
        }
    )
    valid = frame["source_split"] == "valid"
    if valid.any():
        frame.loc[valid, "split"] = split_by_group(
            frame[valid],
            {"val": val_fraction, "test": 1.0 - val_fraction},
            group="patient_id",
            stratify=("region",),
            seed=seed,
        )
    index = make_index(frame)
    index.attrs["warnings"] = list(report.warnings)
    return index


def _scan(root: Path, *, check_files: bool) -> tuple[MuraReport, pd.DataFrame]:
    """Read and cross-check the CSVs (and the tree); return the report and the labelled images."""
    report = MuraReport(root=root)
    mura = root / MURA_DIRNAME
    on_disk = _walk_images(mura) if check_files else None
    parts = []
    for split in SOURCE_SPLITS:
        images = _read_rows(mura / f"{split}_image_paths.csv", 1, _IMAGE_RE, split, report)
        studies = _read_rows(mura / f"{split}_labeled_studies.csv", 2, _STUDY_RE, split, report)
        if images is None or studies is None:
            continue
        if on_disk is not None:
            _check_files(images, on_disk, split, report)
        images = _check_split(images, studies, split, report)
        parts.append(images)
    columns = ["path", "study_dir", "split", "study_type", "patient", "view", "label"]
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    _check_study_types(images, report)
    if images.empty and report.ok:
        report.errors.append(f"the CSVs in {mura} list no images")
    return report, images


def _read_rows(
    path: Path, n_fields: int, pattern: re.Pattern[str], split: str, report: MuraReport
) -> pd.DataFrame | None:
    """Parse one CSV into rows that match ``pattern``; report malformed rows and wrong splits."""
    if not path.is_file():
        report.errors.append(f"{path.name} is missing from {path.parent}")
        return None
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [
            (number, fields)
            for number, row in enumerate(csv.reader(handle), start=1)
            if (fields := _trim(row))
        ]
    if not rows:
        report.errors.append(f"{path.name} in {path.parent} is empty")
        return None
    frame = pd.DataFrame(
        {
            "line": [number for number, _ in rows],
            "path": pd.Series([fields[0] for _, fields in rows], dtype="str"),
            "label": pd.Series([f[1] if len(f) > 1 else "" for _, f in rows], dtype="str"),
            "n_fields": [len(fields) for _, fields in rows],
        }
    )
    parsed = frame["path"].str.extract(pattern)
    frame = pd.concat([frame, parsed], axis=1)
    bad = frame["study_dir"].isna() | (frame["n_fields"] != n_fields)
    if n_fields == 2:
        bad |= ~frame["label"].isin(["0", "1"])
    shape = "one path" if n_fields == 1 else "a study folder and a 0/1 label"
    _report_rows(frame[bad], f"malformed row(s) in {path.name} (each row must be {shape})", report)
    frame = frame[~bad]
    wrong = frame["split"] != split
    _report_rows(frame[wrong], f"row(s) in {path.name} point outside {split}/", report)
    frame = frame[~wrong]
    duplicated = frame["study_dir" if n_fields == 2 else "path"].duplicated()
    _report_rows(frame[duplicated], f"duplicate row(s) in {path.name}", report)
    return frame[~duplicated].drop(columns=["n_fields"])


def _check_split(
    images: pd.DataFrame, studies: pd.DataFrame, split: str, report: MuraReport
) -> pd.DataFrame:
    """Cross-check one split's image list against its labelled studies; return labelled images."""
    studies = studies.assign(label=studies["label"].astype("int64"))
    disagree = studies["label"] != (studies["folder_label"] == "positive").astype("int64")
    _report_rows(
        studies[disagree],
        f"label(s) in {split}_labeled_studies.csv disagree with the study folder name "
        "(study<N>_positive must be 1, study<N>_negative 0)",
        report,
    )
    no_images = studies[~_member(studies["study_dir"], set(images["study_dir"]))]
    _report_rows(
        no_images, f"labelled {split} stud(ies) with no image in {split}_image_paths.csv", report
    )
    unlabelled = images[~_member(images["study_dir"], set(studies["study_dir"]))]
    _report_rows(
        unlabelled.drop_duplicates("study_dir"),
        f"{split} stud(ies) with images but no label in {split}_labeled_studies.csv",
        report,
        key="study_dir",
    )
    labels = studies.set_index("study_dir")["label"]
    images = images.drop(columns=["label"]).assign(label=images["study_dir"].map(labels))
    images = images[images["label"].notna()]
    report.counts[f"{split}_images"] = len(images)
    report.counts[f"{split}_studies"] = int(images["study_dir"].nunique())
    report.counts[f"{split}_patients"] = int(images["patient"].nunique())
    return images


def _check_files(images: pd.DataFrame, on_disk: set[str], split: str, report: MuraReport) -> None:
    """Listed images must exist; images on disk that no CSV lists are only worth a warning."""
    missing = images[~_member(images["path"], on_disk)]
    _report_rows(missing, f"image(s) in {split}_image_paths.csv missing on disk", report)
    prefix = f"{MURA_DIRNAME}/{split}/"
    listed = set(images["path"])
    unlisted = sorted(p for p in on_disk if p.startswith(prefix) and p not in listed)
    if unlisted:
        report.warnings.append(
            f"{len(unlisted)} image(s) under {split}/ are in no CSV and are ignored: "
            f"{_examples(unlisted)}"
        )
    report.counts[f"{split}_images_on_disk"] = sum(p.startswith(prefix) for p in on_disk)


def _check_study_types(images: pd.DataFrame, report: MuraReport) -> None:
    unknown = images[~images["study_type"].isin(STUDY_TYPES)]
    if len(unknown):
        found = unknown["study_type"].value_counts().sort_index()
        listing = ", ".join(f"{name} ({n} image(s))" for name, n in found.items())
        report.errors.append(
            f"unknown study type(s) {listing}; MURA's are {', '.join(STUDY_TYPES)}"
        )


def _walk_images(mura: Path) -> set[str]:
    """All PNG paths under train/ and valid/, relative to the parent of ``mura`` (as the CSVs)."""
    found: set[str] = set()
    skip = len(os.path.join(str(mura.parent), ""))  # the parent plus one separator
    for split in SOURCE_SPLITS:
        for folder, dirs, files in os.walk(mura / split):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = folder[skip:].replace(os.sep, "/")
            found.update(
                f"{rel}/{name}"
                for name in files
                if name.lower().endswith(".png") and not name.startswith(".")
            )
    return found


def _report_rows(rows: pd.DataFrame, what: str, report: MuraReport, *, key: str = "path") -> None:
    """Add one error line: how many rows, and the first few with their CSV line numbers."""
    if rows.empty:
        return
    shown = [f"line {line}: {value}" for line, value in zip(rows["line"], rows[key], strict=True)]
    report.errors.append(f"{len(rows)} {what}: {_examples(shown)}")


def _member(values: pd.Series, allowed: set[str]) -> np.ndarray:
    """``values.isin(allowed)`` by set lookup: pandas' Arrow-string isin is slow on 40k paths."""
    return np.fromiter((v in allowed for v in values), dtype=bool, count=len(values))


def _examples(items: list[str]) -> str:
    head = ", ".join(items[:_EXAMPLES])
    return head if len(items) <= _EXAMPLES else f"{head} (and {len(items) - _EXAMPLES} more)"


def _trim(row: list[str]) -> list[str]:
    """Strip fields and drop trailing empty ones, so 'path,' and 'path' read the same."""
    fields = [f.strip() for f in row]
    while fields and not fields[-1]:
        fields.pop()
    return fields
