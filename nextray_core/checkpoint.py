"""Self-describing checkpoints: safetensors weights plus a JSON card, verified on load.

A checkpoint is a folder holding ``model.safetensors`` and ``card.json``. The card says
everything needed to use the weights (architecture, preprocessing, default threshold) and to
judge them (training config, data, metrics with intervals, licence notes); it records the
sha256 of the weights file, which loading checks before anything else. Nothing is unpickled.
Extra tensors that belong to the model (for instance out-of-distribution statistics) live in
the same safetensors file under the ``extra.`` prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nextray_core.errors import CheckpointError
from nextray_core.model import ARCHITECTURES, build_model
from nextray_core.transforms import Preprocessing

CARD_FORMAT = "nextray-card/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
EXTRA_PREFIX = "extra."
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


@dataclass
class ModelCard:
    """The JSON card of a checkpoint (see DESIGN.md). Unknown keys are kept in ``extra``."""

    name: str
    architecture: str = "resnet152"
    preprocessing: dict[str, Any] = field(default_factory=lambda: Preprocessing().to_dict())
    dropout: float = 0.5
    default_threshold: float = 0.5
    positive_class: str = "abnormal"
    task: str = "abnormality detection in upper-extremity radiographs (MURA)"
    intended_use: str = "research and teaching only; not for clinical use"
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    created: str = ""
    format: str = CARD_FORMAT

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.extra = {**card.extra, **{k: v for k, v in data.items() if k not in known}}
        return card


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    card: ModelCard,
    *,
    dtype: torch.dtype = torch.float32,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write weights and card into ``directory``; each file appears whole or not at all.

    Weights are written first, then the card with their hash: a crash in between leaves a card
    whose hash no longer matches, which loading refuses rather than using stale weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    for key, value in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + key] = value.detach().cpu().contiguous()
    weights = directory / card.weights_file
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(
        tensors, str(tmp), metadata={"format": CARD_FORMAT, "architecture": card.architecture}
    )
    os.replace(tmp, weights)
    card.weights_sha256 = sha256_of(weights)
    card.weights_dtype = str(dtype).removeprefix("torch.")
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_card(directory, card)
    return directory


def write_card(directory: str | Path, card: ModelCard) -> Path:
    """(Re)write only the card, atomically, e.g. to add evaluation metrics later."""
    path = Path(directory) / CARD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept the folder, its card.json or its weights file; refuse anything else clearly."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} looks like a pickled PyTorch file; neXt-Ray never unpickles checkpoints "
            "(unpickling can run arbitrary code). Give a checkpoint folder with model.safetensors "
            "and card.json, or pass a plain state dict through --init when training."
        )
    if path.is_file() and path.name in (CARD_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist")
    if not path.is_dir() or not (path / CARD_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a neXt-Ray checkpoint: expected a folder with {CARD_FILE} and "
            f"{WEIGHTS_FILE}"
        )
    return path


def read_card(path: str | Path) -> ModelCard:
    directory = resolve_checkpoint_dir(path)
    try:
        data = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory / CARD_FILE} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise CheckpointError(
            f"{directory / CARD_FILE} is not a neXt-Ray card (format "
            f"{data.get('format') if isinstance(data, dict) else None!r}, expected {CARD_FORMAT!r})"
        )
    try:
        card = ModelCard.from_dict(data)
    except TypeError as error:
        raise CheckpointError(f"{directory / CARD_FILE} is missing fields: {error}") from error
    if card.architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"card names architecture {card.architecture!r}; this version knows {ARCHITECTURES}"
        )
    return card


def verify_checkpoint(path: str | Path) -> ModelCard:
    """Read the card and check the weights file against its sha256."""
    directory = resolve_checkpoint_dir(path)
    card = read_card(directory)
    weights = directory / card.weights_file
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the card refers to it")
    actual = sha256_of(weights)
    if actual != card.weights_sha256:
        raise CheckpointError(
            f"{weights} does not match its card (sha256 {actual[:12]}..., card says "
            f"{card.weights_sha256[:12]}...): the file was modified, truncated or swapped. "
            "Restore the original file or re-export the checkpoint."
        )
    return card


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard, dict[str, torch.Tensor]]:
    """Verify and load a checkpoint: (model in eval mode, float32, its card, extra tensors)."""
    directory = resolve_checkpoint_dir(path)
    card = verify_checkpoint(directory)
    try:
        tensors = load_file(str(directory / card.weights_file))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{directory / card.weights_file} is not valid safetensors: {error}"
        ) from error
    extras = {
        k.removeprefix(EXTRA_PREFIX): v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)
    }
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    model = build_model(card.architecture, init="none", dropout=card.dropout)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"the weights in {directory} do not fit a {card.architecture} with a one-logit head: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}), {len(wrong_shape)} of the wrong shape"
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval(), card, extras
