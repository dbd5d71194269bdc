"""Probabilities for the images of an index table or for files on disk, per image and per study.

One or more checkpoints (an ensemble) score every image; members that share a preprocessing
share one pass over the data, members with another input size get their own pass. The ensemble's
probability is the mean of its members' probabilities, or with ``combine='vote'`` the share of
members that call the image abnormal at their own card's threshold. A study's probability is the
arithmetic mean of its views' (the MURA convention), leaving out by default the views that
``sanity`` or the OOD score flagged. Thresholds are applied later, never here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nextray_core.checkpoint import ModelCard
from nextray_core.engine import InferenceEngine, build_engine
from nextray_core.errors import ConfigError, DatasetError, NextRayError
from nextray_core.hardware import resolve_device as resolve_device  # re-exported
from nextray_core.imaging import SUPPORTED_SUFFIXES, read_radiograph
from nextray_core.index import INDEX_COLUMNS, MURA_REGIONS, UNKNOWN_LABEL
from nextray_core.loader import RadiographDataset
from nextray_core.metrics import study_table as study_table  # re-exported
from nextray_core.options import COMBINE_RULES
from nextray_core.sanity import check_radiograph, codes, excluded, messages, ood_note
from nextray_core.transforms import Preprocessing, eval_transform, model_input

Member = tuple[InferenceEngine | nn.Module, ModelCard]
UNKNOWN_REGION = "unknown"
_MURA_STUDY = re.compile(r"^study\d+_(positive|negative)$")


def member_columns(n_members: int) -> list[str]:
    """Per-member probability columns (``prob_0``, ...), present only for ensembles."""
    return [f"prob_{i}" for i in range(n_members)] if n_members > 1 else []


def ensemble_threshold(cards: Sequence[ModelCard], combine: str = "mean") -> float:
    """The default threshold of an ensemble's combined probability.

    'mean': the mean of the members' card thresholds (their common value when they agree).
    'vote': a strict majority, (M // 2 + 1) / M of the members (all of them for M = 1 or 2).
    """
    _check_combine(combine)
    if not cards:
        raise ConfigError("an ensemble needs at least one checkpoint")
    if combine == "vote":
        return (len(cards) // 2 + 1) / len(cards)
    return float(np.mean([card.default_threshold for card in cards]))


def ensemble_classes(cards: Sequence[ModelCard]) -> tuple[str, str]:
    """The (negative, positive) label names the members share.

    Members trained for different tasks (MURA abnormality vs FracAtlas fracture) give
    probabilities of different things, so averaging them is refused.
    """
    names = {card.class_names for card in cards}
    if len(names) > 1:
        described = "; ".join(f"{card.name}: {card.positive_class}" for card in cards)
        raise ConfigError(
            f"these checkpoints were trained for different tasks ({described}); "
            "an ensemble needs members with the same positive class"
        )
    if not names:
        raise ConfigError("an ensemble needs at least one checkpoint")
    return names.pop()


def combine_probabilities(
    member_probs: np.ndarray, thresholds: Sequence[float], combine: str = "mean"
) -> np.ndarray:
    """(images x members) probabilities -> one probability per image (see the module doc)."""
    _check_combine(combine)
    member_probs = np.asarray(member_probs, dtype=float)
    if combine == "mean":
        return member_probs.mean(axis=1)
    votes = member_probs >= np.asarray(thresholds, dtype=float)[None, :]
    return np.where(np.isnan(member_probs).any(axis=1), np.nan, votes.mean(axis=1))


def _check_combine(combine: str) -> None:
    if combine not in COMBINE_RULES:
        raise ConfigError(f"unknown ensemble rule {combine!r}; choose one of {COMBINE_RULES}")


def _as_engine(member: InferenceEngine | nn.Module, card: ModelCard, device: torch.device):
    """Engines answer as they are; a bare model answers through plain fp32 PyTorch."""
    if isinstance(member, InferenceEngine):
        return member
    return build_engine(member.to(device).eval(), card, backend="torch-fp32")


class _ReportingDataset(RadiographDataset):
    """A RadiographDataset that checks each image (``sanity``) and reports an unreadable or
    unusable one instead of failing the whole pass: items carry (error, flag codes, notes)."""

    def __init__(self, index: pd.DataFrame, prep: Preprocessing) -> None:
        super().__init__(index, eval_transform(prep))
        self.size, self.prep = prep.size, prep

    def __getitem__(self, position: int):
        label = self.labels[position]
        try:
            radiograph = read_radiograph(self.paths[position], warn=False)
            notes = check_radiograph(radiograph)
        except NextRayError as exc:
            return torch.zeros(3, self.size, self.size), label, position, str(exc), "", ""
        image = model_input(radiograph.to_uint8(), self.prep)
        return image, label, position, "", codes(excluded(notes)), messages(notes)


def predict_index(
    models: Sequence[Member],
    index: pd.DataFrame,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    combine: str = "mean",
    workers: int = 0,
    on_error: str = "raise",
    progress: bool = False,
    keep_features: bool = False,
) -> pd.DataFrame:
    """The index rows plus ``probability`` (and ``prob_0``... for ensembles), in index order.

    ``keep_features``: also return the first member's pooled features (N x F float32, NaN rows
    for unreadable images) in ``result.attrs['features']`` and, if it has OOD statistics, its
    OOD distances in ``result.attrs['ood_distance']`` (from the same forward pass).

    ``on_error='raise'`` stops with a ``DatasetError`` naming every unreadable image after the
    pass (``sanity`` refusals included); ``'report'`` keeps going and adds ``error`` (probability
    NaN), ``flags`` (``sanity`` codes that leave the view out of its study's verdict, ``ood``
    included), ``warning`` (every note's message) and ``ood_score``/``ood_threshold`` (the
    member furthest over its threshold; NaN without OOD statistics) columns.
    """
    _check_combine(combine)
    if not models:
        raise ConfigError("give at least one checkpoint")
    if on_error not in ("raise", "report"):
        raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    index = index.reset_index(drop=True)
    n, m = len(index), len(models)
    probs = np.full((n, m), np.nan)
    errors, flags, notes = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)]
    ood_score, ood_limit = np.full(n, np.nan), np.full(n, np.nan)
    features: np.ndarray | None = None

    by_prep: dict[Preprocessing, list[int]] = {}
    for i, (_, card) in enumerate(models):
        by_prep.setdefault(card.prep, []).append(i)
    for prep, members in by_prep.items():
        engines = [_as_engine(*models[i], device) for i in members]
        loader = DataLoader(
            _ReportingDataset(index, prep),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        batches = tqdm(loader, desc=f"predicting ({prep.size}px)", disable=not progress or n == 0)
        with torch.inference_mode():
            for images, _, positions, batch_errors, batch_flags, batch_notes in batches:
                x = images.to(device, non_blocking=True)
                rows = positions.numpy()
                for i, engine in zip(members, engines, strict=True):
                    result = engine.run(x)
                    probs[rows, i] = result.probabilities.cpu().numpy()
                    if keep_features and i == 0:
                        pooled = result.pooled_features.float()
                        if features is None:
                            features = np.full((n, pooled.shape[1]), np.nan, dtype=np.float32)
                        features[rows] = pooled.cpu().numpy()
                    # predict flags with it; evaluate keeps it only with the run's features
                    if engine.ood is not None and (on_error == "report" or keep_features):
                        scores = engine.ood_score(x, result).numpy()
                        limit = engine.ood.threshold
                        worse = ~(scores / limit <= ood_score[rows] / ood_limit[rows])
                        ood_score[rows] = np.where(worse, scores, ood_score[rows])
                        ood_limit[rows] = np.where(worse, limit, ood_limit[rows])
                for row, error, flag, note in zip(
                    rows, batch_errors, batch_flags, batch_notes, strict=True
                ):
                    errors[row] = errors[row] or error
                    if not errors[row] and not flags[row] and not notes[row]:  # once per image
                        flags[row] += [f for f in flag.split(";") if f]
                        notes[row] += [note] if note else []
    failed = [i for i, e in enumerate(errors) if e]
    probs[failed] = np.nan
    if failed and on_error == "raise":
        shown = "; ".join(errors[i] for i in failed[:3])
        raise DatasetError(
            f"{len(failed)} image(s) could not be read: {shown}"
            + (f" (and {len(failed) - 3} more)" if len(failed) > 3 else "")
            + ". Replace or remove them from the dataset and run again."
        )

    result = index.copy()
    for i, column in enumerate(member_columns(m)):
        result[column] = probs[:, i]
    thresholds = [card.default_threshold for _, card in models]
    result["probability"] = combine_probabilities(probs, thresholds, combine)
    if on_error == "report":
        over = ood_score > ood_limit  # NaN (no statistics, unreadable) compares False
        for row in np.flatnonzero(over & ~np.array([bool(e) for e in errors], dtype=bool)):
            note = ood_note(Path(index.at[row, "image_path"]).name, ood_score[row], ood_limit[row])
            flags[row].append(note.code)
            notes[row].append(note.message)
        result["error"] = errors
        result["flags"] = [";".join(f) for f in flags]
        result["warning"] = [" | ".join(m) for m in notes]
        result["ood_score"] = ood_score
        result["ood_threshold"] = ood_limit
    if keep_features and features is not None:
        features[failed] = np.nan
        result.attrs["features"] = features
        if not np.isnan(ood_score).all():  # the OOD score the flags use, per image
            distances = ood_score.astype(np.float32)
            distances[failed] = np.nan
            result.attrs["ood_distance"] = distances
    return result


def find_image_files(paths_or_folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly (whatever their type: reading them reports a bad one) plus the
    image files (``imaging.SUPPORTED_SUFFIXES``) found by walking the folders given."""
    found: list[Path] = []
    for item in paths_or_folders:
        path = Path(item).expanduser()
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    Path(folder) / name
                    for name in sorted(files)
                    if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES
                ]
        else:
            found.append(path)
    unique = list(dict.fromkeys(p.absolute() for p in found))
    if not unique:
        raise DatasetError(
            f"no image files ({' '.join(SUPPORTED_SUFFIXES)}) in "
            f"{', '.join(map(str, paths_or_folders)) or 'the arguments'}; pass image files or "
            "folders that hold them"
        )
    return unique


def files_index(files: Sequence[Path]) -> pd.DataFrame:
    """An index for loose files: one study per parent folder; region and label read from MURA
    folder names (``XR_WRIST``, ``study1_positive``) where present, else unknown."""
    rows = []
    for path in files:
        folders = [part.lower() for part in path.parent.parts]
        region = next(
            (r for part in reversed(folders) if (r := part.removeprefix("xr_")) in MURA_REGIONS),
            UNKNOWN_REGION,
        )
        match = _MURA_STUDY.match(folders[-1]) if folders else None
        label = UNKNOWN_LABEL if match is None else int(match.group(1) == "positive")
        study = str(path.parent)
        rows.append(
            {
                "image_path": str(path),
                "study_id": study,
                "patient_id": study,
                "region": region,
                "label": label,
                "split": "predict",
            }
        )
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def predict_files(
    models: Sequence[Member],
    paths_or_folders: Iterable[str | os.PathLike],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    combine: str = "mean",
    workers: int = 0,
) -> pd.DataFrame:
    """Image rows (index columns + probability + ``error``/``warning``) for files and folders.

    Unreadable files get an ``error`` message and a NaN probability; the others are scored.
    """
    index = files_index(find_image_files(paths_or_folders))
    return predict_index(
        models,
        index,
        batch_size=batch_size,
        device=device,
        combine=combine,
        workers=workers,
        on_error="report",
    )
