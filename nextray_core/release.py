"""The release step: what turns a trained checkpoint into a complete, self-describing one.

Every checkpoint that ``nextray train`` writes goes through here (and ``nextray release`` runs
it alone on an existing checkpoint; the demo's build script calls it too). On the VALIDATION
split only, it

1. names the task and the classes from the data (``datasets.dataset_task``);
2. fits post-hoc calibration (Platt by default) and folds it into the head
   (``recalibration``), keeping the raw head so that releasing again starts from raw logits;
3. chooses the default threshold (Youden's J, or a sensitivity/specificity target) on the
   calibrated study probabilities, and records the policy;
4. fits the OOD statistics on training-image features (a seeded sample of at most
   ``ood_images``) and calibrates their threshold on validation features;
5. stores the calibration sample that the inference engine guards its fast paths on;
6. writes validation metrics with study-bootstrap intervals into the card, and every
   validation prediction (raw and calibrated) beside it, so anyone can re-derive the threshold.

Test metrics are never computed here: ``nextray evaluate`` scores the test split, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from nextray_core import curves
from nextray_core.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from nextray_core.config import TrainConfig
from nextray_core.datasets.tasks import Task
from nextray_core.engine.calibration import DEFAULT_COUNT, calibration_tensors
from nextray_core.errors import ConfigError
from nextray_core.explain.cam import pooled_logits
from nextray_core.files import write_text_atomic
from nextray_core.loader import RadiographDataset
from nextray_core.ood import collect_depth_features, fit_depth_ood, ood_depths
from nextray_core.options import THRESHOLD_POLICIES
from nextray_core.predict import study_table
from nextray_core.recalibration import (
    RAW_HEAD_BIAS,
    RAW_HEAD_WEIGHT,
    fit_calibration,
    fold_into_head,
    raw_head,
    restore_raw_head,
)
from nextray_core.runs import evaluate_predictions
from nextray_core.transforms import eval_transform

VALIDATION_FILE = "validation_predictions.csv"
_REPLACED_EXTRAS = (RAW_HEAD_WEIGHT, RAW_HEAD_BIAS)  # and every "ood." tensor


@dataclass(frozen=True)
class ReleasePolicy:
    """How the release step chooses; recorded in the card as it was used."""

    threshold: str = "youden"
    target: float = 0.9  # the sensitivity or specificity that the threshold must reach
    calibration: str = "platt"
    ood_images: int = 2000  # training images the OOD statistics are fitted on (seeded sample)
    calibration_images: int = DEFAULT_COUNT
    min_calibration_images: int = 50  # fewer validation images: no calibration (too noisy)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_POLICIES:
            raise ConfigError(
                f"unknown threshold policy {self.threshold!r}; choose one of "
                f"{list(THRESHOLD_POLICIES)}"
            )
        if not 0.0 < self.target < 1.0:
            raise ConfigError(f"the threshold target must be in (0, 1), got {self.target}")
        if self.ood_images < 3:
            raise ConfigError(f"ood_images must be at least 3, got {self.ood_images}")


def choose_threshold(labels: np.ndarray, probs: np.ndarray, policy: ReleasePolicy) -> float:
    if policy.threshold == "sensitivity":
        return curves.sensitivity_threshold(labels, probs, policy.target)
    if policy.threshold == "specificity":
        return curves.specificity_threshold(labels, probs, policy.target)
    return curves.youden_threshold(labels, probs)


def _loader(card: ModelCard, rows: pd.DataFrame, batch_size: int) -> DataLoader:
    return DataLoader(RadiographDataset(rows, eval_transform(card.prep)), batch_size=batch_size)


def _sample(rows: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    return rows if len(rows) <= count else rows.sample(n=count, random_state=seed)


def release(
    checkpoint: str | Path,
    index: pd.DataFrame,
    task: Task,
    *,
    out: str | Path | None = None,
    policy: ReleasePolicy = ReleasePolicy(),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    max_file_mb: float | None = None,
    say: Callable[[str], None] = print,
) -> ModelCard:
    """Release ``checkpoint`` (in place, or into ``out``) from ``index``'s train/val splits."""
    train = index[index["split"] == "train"]
    val = index[(index["split"] == "val") & index["label"].isin([0, 1])]
    if val.empty or val["label"].nunique() < 2:
        raise ConfigError(
            "the release step needs a validation split with both classes (split == 'val'): "
            "it chooses the threshold and calibration there, never on the test split"
        )
    if train.empty:
        raise ConfigError("the release step needs the training split to fit the OOD statistics")
    out = Path(out or checkpoint)
    model, card, extras = load_checkpoint(checkpoint, device=device)
    restored = restore_raw_head(model, extras)
    weights_dtype = dtype or getattr(torch, card.weights_dtype)
    with torch.no_grad():  # fit on the weights as they will be saved (fp16/bf16 rounding)
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(weights_dtype).float())

    say(f"release: {len(val)} validation images (threshold, calibration, OOD threshold)")
    # one pass over validation: the pooled features give the logits and calibrate the OOD
    depths = ood_depths(model)
    val_features = collect_depth_features(model, _loader(card, val, policy.batch_size), depths)
    raw = torch.sigmoid(pooled_logits(model, val_features["layer4"]).double()).cpu().numpy()
    labels = val["label"].to_numpy(dtype=int)
    method = policy.calibration if len(val) >= policy.min_calibration_images else "none"
    if method != policy.calibration:
        say(f"release: only {len(val)} validation images: probabilities left uncalibrated")
    calibration = fit_calibration(raw, labels, method)
    predictions = val.assign(probability_raw=raw, probability=calibration.apply(raw))
    studies = study_table(predictions)
    threshold = choose_threshold(
        studies["label"].to_numpy(dtype=int), studies["probability"].to_numpy(), policy
    )
    evaluation = evaluate_predictions(
        predictions.drop(columns="probability_raw"), threshold, n_boot=policy.n_boot,
        seed=policy.seed,
    )  # fmt: skip

    fit_rows = _sample(train, policy.ood_images, policy.seed)
    say(f"release: {len(fit_rows)} of {len(train)} training images (OOD statistics)")
    fit_features = collect_depth_features(model, _loader(card, fit_rows, policy.batch_size), depths)
    ood = fit_depth_ood(fit_features, val_features)

    kept = {
        k: v for k, v in extras.items() if k not in _REPLACED_EXTRAS and not k.startswith("ood.")
    }
    kept |= raw_head(model)  # before folding: what a later release restores
    fold_into_head(model, calibration)
    kept |= ood.to_tensors()
    kept |= calibration_tensors(val, card.prep.size, policy.calibration_images, policy.seed)

    card.task, card.negative_class, card.positive_class = (
        task.task, task.negative_class, task.positive_class,
    )  # fmt: skip
    card.default_threshold = float(threshold)
    card.extra.pop("engine_guard", None)  # verdicts on other weights: the engine measures anew
    card.extra["ood"] = ood.card_extra()
    card.extra["release"] = {
        "policy": asdict(policy),
        "threshold": f"{_describe_policy(policy)} on the validation split's studies "
        f"({len(studies)} studies, {len(val)} images), after calibration",
        "calibration": {
            **calibration.to_dict(),
            "folded_into_head": True,
            "fitted_on": f"validation split ({len(val)} images)",
            "val_ece_before": curves.expected_calibration_error(labels, raw),
            "val_ece_after": curves.expected_calibration_error(
                labels, predictions["probability"].to_numpy()
            ),
            "val_brier_before": curves.brier_score(labels, raw),
            "val_brier_after": curves.brier_score(labels, predictions["probability"].to_numpy()),
        },
        "ood_fit_images": len(fit_rows),
        "calibration_sample": min(policy.calibration_images, len(val)),
        "validation_predictions": VALIDATION_FILE,
        "released_again": restored,
    }
    card.metrics = {
        **{k: v for k, v in card.metrics.items() if k != "validation"},
        "validation": evaluation.to_json(threshold_source="release (validation split)"),
    }
    save_checkpoint(
        model, out, card, dtype=weights_dtype, extra_tensors=kept, max_file_mb=max_file_mb
    )
    write_text_atomic(out / VALIDATION_FILE, predictions.to_csv(index=False))
    overall = evaluation.tables["image"].loc["overall"]
    say(
        f"released {out}: threshold {threshold:.3f} ({policy.threshold}), val AUC "
        f"{overall['auc']:.3f} ({overall['auc_low']:.3f}-{overall['auc_high']:.3f}), ECE "
        f"{card.extra['release']['calibration']['val_ece_before']:.3f} -> "
        f"{card.extra['release']['calibration']['val_ece_after']:.3f} ({calibration.method}), "
        f"OOD threshold {ood.threshold:.1f}"
    )
    return card


def _describe_policy(policy: ReleasePolicy) -> str:
    if policy.threshold == "youden":
        return "Youden's J (sensitivity + specificity - 1, maximal)"
    return f"the highest threshold with {policy.threshold} >= {policy.target:.2f}"


def release_training_run(best_dir: str | Path, config: TrainConfig) -> ModelCard:
    """The release step at the end of ``nextray train``: the data and policy of its config."""
    from nextray_core.datasets import dataset_task, detect_dataset_kind, load_dataset
    from nextray_core.predict import resolve_device

    kind = detect_dataset_kind(config.data) if config.kind == "auto" else config.kind
    index = load_dataset(kind, config.data, seed=config.data_seed)
    if config.regions:
        index = index[index["region"].isin(config.regions)]
    policy = ReleasePolicy(
        threshold=config.threshold_policy,
        target=config.threshold_target,
        calibration=config.calibration,
        seed=config.seed,
    )
    return release(
        best_dir, index, dataset_task(kind, config.data), policy=policy,
        device=resolve_device(config.device),
    )  # fmt: skip
