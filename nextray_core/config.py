"""Training settings as one frozen dataclass: the single source of truth for defaults and flags.

``TrainConfig``'s defaults are the neXt-Ray report's chosen model (ResNet-152, Adam lr 1e-5,
L2 0.1, dropout 0.5, first 148 layers frozen, batch 16, horizontal flips, 320x320, plain BCE).
Recipes are named presets applied underneath a JSON file and command-line flags:

    TrainConfig defaults  <  recipe preset  <  --config JSON  <  explicit flags

Each field's ``metadata`` carries its help text (and choices), from which the ``nextray train``
flags are generated, so a new setting needs one line here and nothing in the CLI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nextray_core.errors import ConfigError
from nextray_core.options import (
    ARCHITECTURES,
    CALIBRATIONS,
    DATA_KINDS,
    LOSSES,
    PRECISIONS,
    RECIPES,
    SCHEDULERS,
    SELECTIONS,
    THRESHOLD_POLICIES,
)

# What each recipe changes relative to the defaults (the report's recipe).
PRESETS: dict[str, dict[str, Any]] = {
    "report": {},
    # Rajpurkar et al. 2017 with OUR architecture (ResNet-152, not their DenseNet-169; pass
    # --arch densenet169 for theirs): whole network trained, no dropout, per-study-type weighted
    # BCE, Adam lr 1e-4 divided by 10 when the validation loss plateaus, flips + rotations <= 30
    # degrees, batch 8.
    "mura-paper": {
        "loss": "type-weighted",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "dropout": 0.0,
        "freeze_layers": 0,
        "scheduler": "plateau",
        "rotation": 30.0,
        "batch_size": 8,
    },
    # The report's model with the common blog-post fixes: class-weighted BCE and a learning-rate
    # schedule (plateau by default; --scheduler step for step decay).
    "blog": {"loss": "class-weighted", "scheduler": "plateau"},
}

# Settings that do not change what is computed, so a resumed run may change them.
RUNTIME_FIELDS: frozenset[str] = frozenset(
    {"epochs", "workers", "cache_dir", "device", "compile", "progress"}
)


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved into the run folder and the model card."""

    recipe: str = _opt("report", "preset the other defaults come from", RECIPES)
    # data
    data: str = _opt("", "dataset: MURA root, FracAtlas folder, class folders or index CSV")
    kind: str = _opt("auto", "dataset kind", DATA_KINDS)
    data_seed: int = _opt(0, "seed of the dataset's patient-level train/val/test split")
    regions: tuple[str, ...] = _opt((), "comma-separated regions to keep (default: all)")
    # model
    arch: str = _opt("resnet152", "architecture", ARCHITECTURES)
    init: str = _opt(
        "imagenet",
        "initialisation: imagenet (torchvision's weights, downloaded once), none (random), a "
        "state-dict PATH or a checkpoint folder to fine-tune",
    )
    dropout: float = _opt(0.5, "dropout before the one-logit Linear head")
    freeze_layers: int = _opt(148, "freeze the first N parameter tensors (the report froze 148)")
    # optimisation
    lr: float = _opt(1e-5, "Adam learning rate")
    betas: tuple[float, float] = _opt((0.9, 0.999), "Adam betas", nargs=2)
    weight_decay: float = _opt(0.1, "L2 penalty (Adam weight_decay)")
    loss: str = _opt("bce", "bce, or BCE weighted per class / per study type", LOSSES)
    scheduler: str = _opt("none", "learning-rate schedule, stepped once per epoch", SCHEDULERS)
    lr_factor: float = _opt(0.1, "factor the plateau/step schedules multiply the lr by")
    plateau_patience: int = _opt(1, "epochs without val-loss improvement before a plateau cut")
    step_size: int = _opt(10, "epochs between step-decay cuts")
    epochs: int = _opt(20, "number of epochs")
    batch_size: int = _opt(16, "images per step (per process under torchrun)")
    # preprocessing and augmentation
    size: int = _opt(320, "input size in pixels (square)")
    hflip: bool = _opt(True, "random horizontal flips")
    rotation: float = _opt(0.0, "random rotations up to this many degrees")
    crop_scale: float = _opt(1.0, "random resized crops keeping at least this share (1: none)")
    contrast: float = _opt(0.0, "random brightness/contrast jitter of up to this factor")
    erase: float = _opt(0.0, "probability of randomly erasing one rectangle per image")
    # model selection and reproducibility
    select: str = _opt("loss", "best epoch by val loss, or study-level val kappa/AUC", SELECTIONS)
    # the release step after training (nextray_core.release): all chosen on the val split
    threshold_policy: str = _opt(
        "youden", "default threshold: Youden's J, or a sensitivity/specificity target",
        THRESHOLD_POLICIES,
    )  # fmt: skip
    threshold_target: float = _opt(0.9, "the target of the sensitivity/specificity policies")
    calibration: str = _opt(
        "platt", "post-hoc probability calibration folded into the head", CALIBRATIONS
    )
    seed: int = _opt(0, "seed of initialisation, shuffling, augmentation and dropout")
    deterministic: bool = _opt(False, "deterministic algorithms only (slower on GPU)")
    # speed
    precision: str = _opt("bf16", "bf16 autocast or plain fp32", PRECISIONS)
    channels_last: bool = _opt(True, "channels-last memory format (faster convolutions)")
    compile: bool = _opt(False, "torch.compile the model (slow start, faster steps)")
    workers: int = _opt(4, "data-loading worker processes (0: load in the main process)")
    cache_dir: str = _opt("", "folder for the decoded, resized uint8 image cache (off if empty)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    progress: bool = _opt(True, "progress bars (only shown on a terminal)")

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} = {getattr(self, f.name)!r} is not one of {list(choices)}"
                )
        checks = {
            "lr": self.lr > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "weight_decay": self.weight_decay >= 0,
            "freeze_layers": self.freeze_layers >= 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "size": self.size >= 32,
            "rotation": 0.0 <= self.rotation <= 180.0,
            "crop_scale": 0.05 <= self.crop_scale <= 1.0,
            "contrast": 0.0 <= self.contrast < 1.0,
            "erase": 0.0 <= self.erase <= 1.0,
            "threshold_target": 0.0 < self.threshold_target < 1.0,
            "lr_factor": 0.0 < self.lr_factor < 1.0,
            "plateau_patience": self.plateau_patience >= 0,
            "step_size": self.step_size >= 1,
            "workers": self.workers >= 0,
            "betas": len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
        }
        if self.init == "none" and self.freeze_layers > 0:
            raise ConfigError(
                f"--init none with --freeze-layers {self.freeze_layers}: frozen layers of a "
                "randomly initialised network stay random and never learn, so the model would "
                "learn only from noise features. Pass --init imagenet (the report's recipe), "
                "--init PATH (a state dict or checkpoint folder), or --init none --freeze-layers 0"
            )
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name} = {getattr(self, name)!r}" for name in bad)
            raise ConfigError(f"out of range: {values} (see nextray train --help)")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        values = {}
        for name, value in data.items():
            if name == "regions" and isinstance(value, str):
                value = parse_regions(value)
            elif isinstance(known[name].default, tuple) and isinstance(value, list):
                value = tuple(value)
            values[name] = value
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"bad training settings: {error}") from error


def parse_regions(text: str) -> tuple[str, ...]:
    """'wrist, Hand' -> ('hand', 'wrist'): lower case, sorted, no duplicates."""
    return tuple(sorted({part.strip().lower() for part in text.split(",") if part.strip()}))


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error})") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of settings")
    return data


def resolve_config(
    overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> TrainConfig:
    """Defaults < recipe preset < JSON file < overrides (explicit flags)."""
    overrides = dict(overrides or {})
    from_file = read_config_file(config_file) if config_file else {}
    recipe = overrides.get("recipe") or from_file.get("recipe") or "report"
    if recipe not in PRESETS:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
    return TrainConfig.from_dict({**PRESETS[recipe], **from_file, **overrides, "recipe": recipe})


def resume_config(saved: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of a run, with only runtime settings (epochs, workers...) changeable."""
    config = TrainConfig.from_dict(saved)
    updated = TrainConfig.from_dict({**saved, **(overrides or {})})
    changed = [
        f.name for f in fields(config) if getattr(config, f.name) != getattr(updated, f.name)
    ]
    refused = sorted(set(changed) - RUNTIME_FIELDS)
    if refused:
        raise ConfigError(
            f"--resume continues a run exactly, so it cannot change {refused}; only "
            f"{sorted(RUNTIME_FIELDS)} may change. Start a new run (--out NEW_DIR) instead."
        )
    return updated
