"""The one index table every dataset becomes, and the seeded splits made on it.

Columns (DESIGN.md): ``image_path`` (absolute path), ``study_id``, ``patient_id``, ``region``
(MURA study type in lower case, or a body part for other datasets), ``label`` (1 = abnormal,
0 = normal, -1 = unknown) and ``split``. Everything downstream reads only this table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nextray_core.errors import DatasetError

INDEX_COLUMNS: tuple[str, ...] = (
    "image_path",
    "study_id",
    "patient_id",
    "region",
    "label",
    "split",
)
MURA_REGIONS: tuple[str, ...] = (
    "elbow",
    "finger",
    "forearm",
    "hand",
    "humerus",
    "shoulder",
    "wrist",
)
UNKNOWN_LABEL = -1


def make_index(rows: pd.DataFrame | Sequence[dict]) -> pd.DataFrame:
    """Return a validated index table with the canonical column order and dtypes."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(INDEX_COLUMNS))
    validate_index(frame)
    frame = frame[list(INDEX_COLUMNS) + [c for c in frame.columns if c not in INDEX_COLUMNS]]
    frame = frame.astype(
        {
            "image_path": str,
            "study_id": str,
            "patient_id": str,
            "region": str,
            "label": "int64",
            "split": str,
        }
    )
    return frame.reset_index(drop=True)


def validate_index(frame: pd.DataFrame) -> None:
    """Raise ``DatasetError`` if ``frame`` is not a usable index table."""
    missing = [c for c in INDEX_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"index table lacks the column(s) {missing}; an index needs {list(INDEX_COLUMNS)}"
        )
    if frame.empty:
        return
    bad_labels = sorted(set(frame["label"].astype(int)) - {0, 1, UNKNOWN_LABEL})
    if bad_labels:
        raise DatasetError(f"labels must be 0 (normal), 1 (abnormal) or -1; found {bad_labels}")
    duplicated = frame["image_path"].duplicated()
    if duplicated.any():
        first = frame.loc[duplicated, "image_path"].iloc[0]
        raise DatasetError(
            f"{int(duplicated.sum())} image(s) are listed twice in the index, e.g. {first}"
        )
    patient_splits = frame.groupby("patient_id")["split"].nunique()
    leaking = patient_splits[patient_splits > 1]
    if len(leaking):
        raise DatasetError(
            f"{len(leaking)} patient(s) appear in more than one split (e.g. {leaking.index[0]}); "
            "split by patient so that no patient leaks between splits"
        )


def split_by_group(
    frame: pd.DataFrame,
    fractions: dict[str, float],
    *,
    group: str = "patient_id",
    stratify: Sequence[str] = (),
    seed: int = 0,
) -> pd.Series:
    """Assign each group (default: patient) to one split, stratified, reproducibly.

    ``fractions`` maps split names to shares of the groups (they are normalised). Groups are
    stratified by the columns in ``stratify`` taken from each group's first row, then shuffled
    with ``seed`` and cut in proportion within each stratum, so every stratum appears in every
    split it is large enough for. Returns a Series of split names aligned with ``frame``.
    """
    if not fractions or any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise DatasetError(f"split fractions must be non-negative and not all zero: {fractions}")
    names = list(fractions)
    shares = np.array([fractions[n] for n in names], dtype=float)
    shares /= shares.sum()
    groups = frame.groupby(group, sort=True).first()
    strata = (
        groups[list(stratify)].astype(str).agg("|".join, axis=1)
        if stratify
        else pd.Series("all", index=groups.index)
    )
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, members in sorted(strata.groupby(strata).groups.items()):
        members = np.array(sorted(members), dtype=object)
        rng.shuffle(members)
        bounds = np.round(np.cumsum(shares) * len(members)).astype(int)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            for member in members[start:stop]:
                assignment[member] = name
            start = stop
    return frame[group].map(assignment).rename("split")


DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_stratified(
    frame: pd.DataFrame, fractions: dict[str, float] | None = None, *, seed: int = 0
) -> pd.Series:
    """The split used for datasets without a published one: by patient, per region and label."""
    return split_by_group(
        frame,
        fractions or DEFAULT_FRACTIONS,
        group="patient_id",
        stratify=("region", "label"),
        seed=seed,
    )
