"""What a dataset asks a model: the task's wording and the names of label 0 and label 1.

A checkpoint's card names its task and classes from the data it was trained on (never a
default): MURA is "abnormal / normal", FracAtlas "fractured / not fractured", and a plain folder
speaks with its own folder names ("negative / positive" if that is what the user wrote).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nextray_core.datasets.folder import find_class_folders


@dataclass(frozen=True)
class Task:
    task: str
    negative_class: str
    positive_class: str


MURA_TASK = Task(
    "abnormality detection in upper-extremity radiographs (MURA)", "normal", "abnormal"
)
FRACATLAS_TASK = Task(
    "fracture detection in musculoskeletal radiographs (FracAtlas: hand, leg, hip, shoulder, "
    "mixed)",
    "not fractured",
    "fractured",
)


def dataset_task(kind: str, root: str | Path) -> Task:
    """The task and class names of the dataset of ``kind`` at ``root``."""
    if kind == "mura":
        return MURA_TASK
    if kind == "fracatlas":
        return FRACATLAS_TASK
    if kind == "folder":
        names: dict[int, str] = {}
        for _, label, folder in find_class_folders(root):
            names.setdefault(label, folder.name.lower())
        return Task(
            f"{names.get(1, 'abnormal')} vs {names.get(0, 'normal')} radiographs "
            f"(the folders of {Path(root).name})",
            names.get(0, "normal"),
            names.get(1, "abnormal"),
        )
    return Task(f"binary classification from the index table {Path(root).name}", "normal",
                "abnormal")  # fmt: skip
