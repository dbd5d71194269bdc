"""Evaluation runs: a folder the CLI writes once and the dashboard reads.

A run holds ``predictions.csv`` (one row per image: the index columns, ``probability`` and, for
ensembles, ``prob_0``...) and ``run.json`` (checkpoints with their sha256, dataset, split,
preprocessing, ensemble rule, the card's default threshold, counts, versions). No threshold is
baked into the predictions. ``nextray evaluate`` adds metrics.json, curves.json, report.md and,
for MURA, the official scorer's scorer_predictions.csv.

A run is written into a temporary folder beside its destination and renamed into place, so a
crash never leaves a half-written run; an existing folder that is not a run is never touched.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nextray_core import curves, metrics
from nextray_core.checkpoint import ModelCard
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.index import INDEX_COLUMNS
from nextray_core.metrics import study_table

RUN_FORMAT = "nextray-run/1"
PREDICTIONS_FILE = "predictions.csv"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.json"
REPORT_FILE = "report.md"
SCORER_FILE = "scorer_predictions.csv"
METRICS_FORMAT = "nextray-metrics/1"
MURA_PREFIX = "MURA-v1.1/"
LEVELS: tuple[str, ...] = ("image", "study")


@dataclass
class Run:
    """A run read back: its image predictions, its metadata and (if evaluated) its metrics."""

    path: Path
    predictions: pd.DataFrame
    meta: dict[str, Any]
    metrics: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)

    @property
    def default_threshold(self) -> float:
        return float(self.meta["default_threshold"])

    @property
    def scorers(self) -> dict[str, str]:
        """{weights SHA-256: checkpoint name} of the checkpoints that scored the run: what
        pairs a run with its checkpoint wherever either was copied."""
        entries = self.meta.get("checkpoints") or []
        return {e["weights_sha256"]: e.get("name", "?") for e in entries if e.get("weights_sha256")}

    @property
    def class_names(self) -> tuple[str, str]:
        """What label 0 and 1 mean (runs from before this was recorded: MURA's names)."""
        classes = self.meta.get("classes") or {}
        return (classes.get("negative", "normal"), classes.get("positive", "abnormal"))


@dataclass
class Evaluation:
    """Metrics of one set of predictions at one threshold: what metrics.json and curves.json hold.

    ``tables`` maps 'image' and 'study' to ``metrics.metric_table`` frames; ``curves`` maps them
    to ``curves.curve_summary`` dicts (ROC, PR, calibration, presets per region).
    """

    threshold: float
    tables: dict[str, pd.DataFrame]
    curves: dict[str, dict[str, Any]]
    bootstrap: dict[str, Any]

    @property
    def calibration(self) -> dict[str, dict[str, float]]:
        return {
            level: {k: self.curves[level][metrics.OVERALL][k] for k in ("ece", "brier")}
            for level in self.curves
        }

    def to_json(self, threshold_source: str = "card") -> dict[str, Any]:
        return {
            "format": METRICS_FORMAT,
            "threshold": self.threshold,
            "threshold_source": threshold_source,
            "bootstrap": self.bootstrap,
            **{level: metrics.table_to_dict(table) for level, table in self.tables.items()},
            "calibration": self.calibration,
            "presets": {level: c[metrics.OVERALL]["presets"] for level, c in self.curves.items()},
        }


def evaluate_predictions(
    predictions: pd.DataFrame,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Evaluation:
    """Image- and study-level metrics (study bootstrap intervals), curves and calibration."""
    frames = {"image": predictions, "study": study_table(predictions)}
    return Evaluation(
        threshold=float(threshold),
        tables={
            level: metrics.metric_table(
                frame, threshold, n_boot=n_boot, seed=seed, confidence=confidence
            )
            for level, frame in frames.items()
        },
        curves={level: curves.curve_summary(frame) for level, frame in frames.items()},
        bootstrap={
            "n": n_boot,
            "seed": seed,
            "confidence": confidence,
            "unit": "study",
            "stratified_by": "region",
        },
    )


def nextray_version() -> str:
    try:
        return metadata.version("nextray")
    except metadata.PackageNotFoundError:
        return "unknown"


def jsonable(value: Any) -> Any:
    """Plain JSON types all the way down: numpy scalars unwrapped, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Series):
        return [jsonable(v) for v in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dump_json(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n"


def _counts(predictions: pd.DataFrame) -> dict[str, Any]:
    studies = predictions.drop_duplicates("study_id")
    per_region = {
        str(region): {
            "images": len(group),
            "studies": int(group["study_id"].nunique()),
            "abnormal_studies": int((group.drop_duplicates("study_id")["label"] == 1).sum()),
        }
        for region, group in predictions.groupby("region", sort=True)
    }
    return {
        "images": len(predictions),
        "studies": len(studies),
        "patients": int(predictions["patient_id"].nunique()),
        "abnormal_images": int((predictions["label"] == 1).sum()),
        "abnormal_studies": int((studies["label"] == 1).sum()),
        "unlabelled_images": int((predictions["label"] == -1).sum()),
        "regions": per_region,
    }


def build_meta(
    *,
    checkpoints: Sequence[tuple[str | Path, ModelCard]],
    predictions: pd.DataFrame,
    dataset_kind: str,
    data_root: str | Path,
    split: str,
    combine: str,
    default_threshold: float,
    batch_size: int,
    regions: Sequence[str] | None = None,
    device: str = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run.json record: what was evaluated, on what, how, and what came out."""
    cards = [card for _, card in checkpoints]
    architectures = sorted({card.architecture for card in cards})
    preps = [card.prep.to_dict() for card in cards]
    return {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nextray_version": nextray_version(),
        "checkpoints": [
            {
                "name": card.name,
                "path": str(Path(path).resolve()),
                "weights_sha256": card.weights_sha256,
                "architecture": card.architecture,
                "preprocessing": card.prep.to_dict(),
                "default_threshold": card.default_threshold,
            }
            for path, card in checkpoints
        ],
        "architecture": architectures[0] if len(architectures) == 1 else architectures,
        "preprocessing": preps[0] if all(p == preps[0] for p in preps) else preps,
        "ensemble": {"members": len(cards), "combine": combine},
        "classes": {"negative": cards[0].negative_class, "positive": cards[0].positive_class},
        "default_threshold": float(default_threshold),
        "dataset": {
            "kind": dataset_kind,
            "root": str(Path(data_root).resolve()),
            "split": split,
            "regions": sorted(regions) if regions else None,
        },
        "batch_size": int(batch_size),
        "device": str(device),
        "counts": _counts(predictions),
        **dict(extra or {}),
    }


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a neXt-Ray run.json."""
    try:
        data = json.loads((Path(path) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == RUN_FORMAT


def check_run_target(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a destination that would lose data; call it before any slow work."""
    path = Path(path).expanduser()
    if not path.exists():
        return path
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a folder for the run")
    if not any(path.iterdir()):
        return path
    if not is_run(path):
        raise ConfigError(
            f"--out {path} exists and is not an evaluation run; neXt-Ray will not write into it "
            "(nothing was changed). Choose a new folder."
        )
    if not overwrite:
        raise ConfigError(
            f"--out {path} already holds a run; pass --overwrite to replace it or choose "
            "another folder"
        )
    return path


def write_run(
    path: str | Path,
    predictions: pd.DataFrame,
    meta: Mapping[str, Any],
    *,
    files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    images_root: str | Path | None = None,
) -> Path:
    """Write a run folder atomically: predictions.csv, run.json and ``files`` (name -> text).

    ``images_root``: also copy every image into ``images/`` (paths kept relative to this root)
    and record the copies' relative paths, so that the run opens anywhere with its images (the
    shipped demo run). Only for data whose licence allows copies; MURA's does not.
    """
    missing = [c for c in (*INDEX_COLUMNS, "probability") if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack the column(s) {missing}")
    path = check_run_target(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a run is meant to be shared
        if images_root is not None:
            predictions = _copy_images(predictions, Path(images_root), staging)
        predictions.to_csv(staging / PREDICTIONS_FILE, index=False)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / RUN_FILE).write_text(dump_json(meta), encoding="utf-8")  # last: marks it whole
        if path.exists():  # an empty folder or, with overwrite, a previous run
            retired = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _copy_images(predictions: pd.DataFrame, root: Path, staging: Path) -> pd.DataFrame:
    root = root.resolve()
    copied = []
    for image in predictions["image_path"]:
        source = Path(image).resolve()
        if not source.is_relative_to(root):
            raise ValueError(f"{source} is not inside {root}; cannot copy it into the run")
        relative = Path(IMAGES_FOLDER) / source.relative_to(root)
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staging / relative)
        copied.append(relative.as_posix())
    return predictions.assign(image_path=copied)


def read_run(path: str | Path) -> Run:
    """Read a run folder back, or raise ``DatasetError`` saying why it is not one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"no run at {path}: not a folder; create one with nextray evaluate")
    if not (path / RUN_FILE).is_file():
        raise DatasetError(
            f"{path} is not an evaluation run (no {RUN_FILE}); create one with "
            f"'nextray evaluate --out {path}'"
        )
    try:
        meta = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise DatasetError(f"{path / RUN_FILE} is not readable JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise DatasetError(f"{path / RUN_FILE} is not a neXt-Ray run (format {RUN_FORMAT!r})")
    if not (path / PREDICTIONS_FILE).is_file():
        raise DatasetError(f"{path} lacks {PREDICTIONS_FILE}; evaluate again to rebuild the run")
    text_columns = [c for c in INDEX_COLUMNS if c != "label"]
    try:
        predictions = pd.read_csv(
            path / PREDICTIONS_FILE, dtype=dict.fromkeys(text_columns, str), keep_default_na=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise DatasetError(f"{path / PREDICTIONS_FILE} is not a readable CSV: {error}") from error
    missing = [c for c in (*INDEX_COLUMNS, "probability") if c not in predictions.columns]
    if missing:
        raise DatasetError(f"{path / PREDICTIONS_FILE} lacks the column(s) {missing}")
    predictions["image_path"] = [resolve_image_path(path, p) for p in predictions["image_path"]]
    scores = None
    if (path / METRICS_FILE).is_file():
        try:
            scores = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
        except ValueError as error:
            raise DatasetError(f"{path / METRICS_FILE} is not readable JSON: {error}") from error
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    return Run(path=path, predictions=predictions, meta=meta, metrics=scores, files=files)


IMAGES_FOLDER = "images"


def resolve_image_path(run: Path, image_path: str) -> str:
    """Relative image paths belong to runs that carry their images (the shipped demo run):
    they are relative to the run folder, wherever it was cloned."""
    if not image_path or Path(image_path).is_absolute():
        return image_path
    return str(run / image_path)


def mura_study_path(study_id: str) -> str:
    """``valid/XR_WRIST/patient11185/study1_positive`` -> the path as in MURA's CSVs."""
    study = study_id.strip("/")
    if not study.startswith(MURA_PREFIX):
        study = MURA_PREFIX + study
    return study + "/"


def scorer_csv(studies: pd.DataFrame, threshold: float) -> str:
    """The official MURA scorer's input: ``study_path,prediction`` per study, no header.

    The prediction is 1 (abnormal) where the study probability is >= ``threshold``.
    """
    lines = [
        f"{mura_study_path(str(study))},{int(probability >= threshold)}"
        for study, probability in zip(studies["study_id"], studies["probability"], strict=True)
    ]
    return "".join(line + "\n" for line in lines)
