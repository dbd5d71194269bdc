"""Self-describing checkpoints: safetensors weights plus a JSON card, verified on load.

A checkpoint is a folder holding ``model.safetensors`` and ``card.json``. The card says
everything needed to use the weights (architecture, preprocessing, default threshold) and to
judge them (training config, data, metrics with intervals, licence notes); it records the
sha256 of the weights file, which loading checks before anything else. Nothing is unpickled.
Extra tensors that belong to the model (for instance out-of-distribution statistics) live in
the same safetensors file under the ``extra.`` prefix.

Hosts that cap file sizes (the repo allows nothing over 50 MB) get shards instead:
``save_checkpoint(..., max_file_mb=45)`` writes ``model-00001-of-0000N.safetensors`` files,
listed with their sha256 in ``card.weights_shards``; ``card.weights_sha256`` is then the
sha256 of the shard hashes, so caches keyed on it still change when any shard does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

from nextray_core.errors import CheckpointError, ConfigError
from nextray_core.files import write_text_atomic
from nextray_core.model import build_skeleton, state_shapes
from nextray_core.options import ARCHITECTURES
from nextray_core.transforms import Preprocessing

CARD_FORMAT = "nextray-card/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
EXTRA_PREFIX = "extra."
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.safetensors$")
MB = 1_000_000  # decimal megabytes: stricter than MiB, so a limit in either unit is respected


@dataclass
class ModelCard:
    """The JSON card of a checkpoint (see DESIGN.md). Unknown keys are kept in ``extra``."""

    name: str
    architecture: str = "resnet152"
    preprocessing: dict[str, Any] = field(default_factory=lambda: Preprocessing().to_dict())
    dropout: float = 0.5
    default_threshold: float = 0.5
    positive_class: str = "abnormal"
    negative_class: str = "normal"
    task: str = "abnormality detection in upper-extremity radiographs (MURA)"
    intended_use: str = "research and teaching only; not for clinical use"
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    weights_shards: list[dict[str, str]] = field(default_factory=list)
    weights_dtype: str = "float32"
    created: str = ""
    format: str = CARD_FORMAT

    @property
    def class_names(self) -> tuple[str, str]:
        """What label 0 and label 1 mean for this model, e.g. ("not fractured", "fractured")."""
        return (self.negative_class, self.positive_class)

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def weight_file_names(self) -> list[str]:
        """The files holding the weights: the shards in order, or the single weights file."""
        return [shard["file"] for shard in self.weights_shards] or [self.weights_file]

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


def combined_sha256(hashes: list[str]) -> str:
    """One digest for a sharded checkpoint that changes whenever any shard does."""
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    card: ModelCard,
    *,
    dtype: torch.dtype = torch.float32,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    max_file_mb: float | None = None,
) -> Path:
    """Write weights and card into ``directory``; each file appears whole or not at all.

    Weights are written first, then the card with their hash: a crash in between leaves a card
    whose hash no longer matches, which loading refuses rather than using stale weights. With
    ``max_file_mb``, weights larger than that are split into shards of at most that size (a
    single tensor larger than the limit gets a shard of its own). Weight files that the new
    card no longer lists (an older single file or older shards) are removed afterwards. The
    limit is recorded in the card (``extra["max_file_mb"]``) and kept when a loaded checkpoint
    is saved again without one, so re-saving never silently brings back one big file;
    ``max_file_mb=math.inf`` asks for one file again.
    """
    if max_file_mb is None:
        max_file_mb = (card.extra or {}).get("max_file_mb")
    if max_file_mb is not None and not max_file_mb > 0:
        raise ConfigError(f"max_file_mb must be a positive number of MB or None, got {max_file_mb}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    for key, value in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + key] = value.detach().cpu().contiguous()
    metadata = {"format": CARD_FORMAT, "architecture": card.architecture}
    limit = None if max_file_mb is None or math.isinf(max_file_mb) else int(max_file_mb * MB)
    groups = _shard_groups(tensors, metadata, limit)
    if len(groups) == 1:
        _write_safetensors(tensors, directory / card.weights_file, metadata)
        card.weights_sha256 = sha256_of(directory / card.weights_file)
        card.weights_shards = []
    else:
        stem = Path(card.weights_file).stem
        card.weights_shards = []
        for number, keys in enumerate(groups, start=1):
            name = f"{stem}-{number:05d}-of-{len(groups):05d}.safetensors"
            _write_safetensors({k: tensors[k] for k in keys}, directory / name, metadata)
            card.weights_shards.append({"file": name, "sha256": sha256_of(directory / name)})
        card.weights_sha256 = combined_sha256([shard["sha256"] for shard in card.weights_shards])
    if max_file_mb is not None and math.isfinite(max_file_mb):
        card.extra["max_file_mb"] = max_file_mb
    else:
        card.extra.pop("max_file_mb", None)
    card.weights_dtype = str(dtype).removeprefix("torch.")
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_card(directory, card)
    _remove_stale_weights(directory, card)
    return directory


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _shard_groups(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], limit: int | None
) -> list[list[str]]:
    """Greedy split of the keys, in order, into files of at most ``limit`` bytes (header too)."""
    fixed = 16 + len(json.dumps({"__metadata__": metadata}))  # length prefix, padding, metadata
    sizes = {key: _entry_bytes(key, value) for key, value in tensors.items()}
    if limit is None or fixed + sum(sizes.values()) <= limit:
        return [list(tensors)]
    groups: list[list[str]] = [[]]
    used = fixed
    for key, size in sizes.items():
        if groups[-1] and used + size > limit:
            groups.append([])
            used = fixed
        groups[-1].append(key)
        used += size
    return groups


def _entry_bytes(key: str, value: torch.Tensor) -> int:
    """An upper bound on what one tensor adds to a safetensors file: data plus its header entry."""
    entry = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [10**15, 10**15]}
    return value.numel() * value.element_size() + len(json.dumps({key: entry})) + 2


def _remove_stale_weights(directory: Path, card: ModelCard) -> None:
    """Delete weight files of earlier saves that the card just written no longer lists."""
    keep = set(card.weight_file_names)
    stem = Path(card.weights_file).stem
    for path in directory.glob("*.safetensors"):
        match = _SHARD_NAME.match(path.name)
        ours = path.name == card.weights_file or (match is not None and match["stem"] == stem)
        if ours and path.name not in keep:
            path.unlink()


def write_card(directory: str | Path, card: ModelCard) -> Path:
    """(Re)write only the card, atomically, e.g. to add evaluation metrics later."""
    return write_text_atomic(Path(directory) / CARD_FILE, card.to_json())


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept the folder, its card.json or a weights file (or shard); refuse anything else."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} looks like a pickled PyTorch file; neXt-Ray never unpickles checkpoints "
            "(unpickling can run arbitrary code). Give a checkpoint folder with model.safetensors "
            "and card.json, or pass a plain state dict through --init when training."
        )
    if path.is_file() and (path.name in (CARD_FILE, WEIGHTS_FILE) or _SHARD_NAME.match(path.name)):
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
    if card.weights_shards is None:
        card.weights_shards = []
    if not isinstance(card.weights_shards, list):
        raise CheckpointError(
            f"{directory / CARD_FILE}: weights_shards must be a list, got "
            f"{type(card.weights_shards).__name__}. Restore the original card or re-export."
        )
    if card.architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"card names architecture {card.architecture!r}; this version knows {ARCHITECTURES}"
        )
    _check_plain_name(directory, card.weights_file, "weights_file")
    return card


def _check_plain_name(directory: Path, name: object, what: str) -> None:
    """Refuse a file name in the card that would leave the checkpoint folder.

    A card is data that travels with downloaded weights: ``"../../x"`` or ``"/etc/..."`` must
    not make neXt-Ray hash, read or report a file outside the folder it was given.
    """
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and ":" not in name  # a Windows drive ("C:x") or an NTFS stream
        and Path(name).name == name
    )
    if not plain:
        raise CheckpointError(
            f"{directory / CARD_FILE}: {what} {name!r} is not a plain file name inside the "
            "checkpoint folder (absolute paths and '..' are refused). Restore the original card "
            "or re-export the checkpoint."
        )


def verify_checkpoint(path: str | Path) -> ModelCard:
    """Check every weights file (or shard) against its sha256 AND that the weights would load.

    A matching hash says the files are the ones the card was written for, not that they are
    usable: each file's safetensors header must parse, and the tensor names and shapes must be
    those of the card's architecture (read from the headers; no weights are loaded).
    """
    directory = resolve_checkpoint_dir(path)
    card = read_card(directory)
    shapes: dict[str, tuple[int, ...]] = {}
    for file, expected, role in _weight_files(directory, card):
        weights = directory / file
        _require(weights, role)
        _check_digest(weights, sha256_of(weights), expected)
        try:
            with safe_open(weights, framework="pt") as reader:
                names = reader.keys()  # a safe_open handle is not iterable
                part = {key: tuple(reader.get_slice(key).get_shape()) for key in names}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"{weights} matches its hash but is not valid safetensors ({error}); the card "
                "was written for a broken file. Re-export the checkpoint."
            ) from error
        shapes.update(part)
    model_shapes = {k: v for k, v in shapes.items() if not k.startswith(EXTRA_PREFIX)}
    _check_fits(directory, card, model_shapes, state_shapes(_skeleton(card)))
    return card


def _skeleton(card: ModelCard) -> nn.Module:
    return build_skeleton(card.architecture, dropout=card.dropout)


def _check_fits(
    directory: Path,
    card: ModelCard,
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
) -> None:
    """Refuse weights whose tensor names or shapes are not those of the card's architecture."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    problems = [
        f"{len(names)} {what} (e.g. {names[:2]})"
        for names, what in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (wrong_shape, "of the wrong shape"),
        )
        if names
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {directory} do not fit a {card.architecture} with a one-logit head: "
            f"{', '.join(problems)}. Check the card's architecture or re-export the checkpoint."
        )


def _weight_files(directory: Path, card: ModelCard) -> list[tuple[str, str, str]]:
    """(file, expected sha256, role in messages) for each weights file the card lists."""
    if not card.weights_shards:
        return [(card.weights_file, card.weights_sha256, "")]
    shards = _shard_entries(directory, card)
    if combined_sha256([expected for _, expected in shards]) != card.weights_sha256:
        raise CheckpointError(
            f"{directory / CARD_FILE}: weights_sha256 does not match the shard hashes it lists "
            "(the card was edited by hand). Restore the original card or re-export the checkpoint."
        )
    count = len(shards)
    return [
        (file, expected, f" as shard {number} of {count}")
        for number, (file, expected) in enumerate(shards, start=1)
    ]


def _shard_entries(directory: Path, card: ModelCard) -> list[tuple[str, str]]:
    """The (file, sha256) pairs of a sharded card, refusing entries that are not plain names."""
    entries = []
    for shard in card.weights_shards:
        file = shard.get("file") if isinstance(shard, dict) else None
        digest = shard.get("sha256") if isinstance(shard, dict) else None
        if not (isinstance(file, str) and isinstance(digest, str) and _SHARD_NAME.match(file)):
            raise CheckpointError(
                f"{directory / CARD_FILE} has a malformed weights_shards entry {shard!r}; each "
                "must be {'file': 'model-0000K-of-0000N.safetensors', 'sha256': ...}. "
                "Restore the original card or re-export the checkpoint."
            )
        _check_plain_name(directory, file, "weights_shards file")
        entries.append((file, digest))
    return entries


def _require(weights: Path, role: str) -> None:
    if not weights.is_file():
        raise CheckpointError(
            f"{weights} is missing; the card lists it{role}. Restore the file (copy the whole "
            "checkpoint folder) or re-export the checkpoint."
        )


def _check_digest(weights: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise CheckpointError(
            f"{weights} does not match its card (sha256 {actual[:12]}..., card says "
            f"{expected[:12]}...): the file was modified, truncated or swapped. "
            "Restore the original file or re-export the checkpoint."
        )


def load_tensors(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Verify a checkpoint and read all its tensors (``extra.`` ones included), shards merged.

    Each file is read once: hashed and deserialised from the same bytes (verifying first and
    loading after would read every weight twice at each start-up).
    """
    directory = resolve_checkpoint_dir(path)
    card = read_card(directory)
    tensors: dict[str, torch.Tensor] = {}
    for file, expected, role in _weight_files(directory, card):
        weights = directory / file
        _require(weights, role)
        data = weights.read_bytes()
        _check_digest(weights, hashlib.sha256(data).hexdigest(), expected)
        try:
            part = load_bytes(data)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                f"{weights} is not valid safetensors: {error}. Re-export the checkpoint."
            ) from error
        repeated = sorted(set(part) & set(tensors))
        if repeated:
            raise CheckpointError(
                f"{weights} repeats tensors of an earlier shard (e.g. {repeated[:2]}); "
                "re-export the checkpoint."
            )
        tensors.update(part)
    return card, tensors


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard, dict[str, torch.Tensor]]:
    """Verify and load a checkpoint: (model in eval mode, float32, its card, extra tensors)."""
    directory = resolve_checkpoint_dir(path)
    card, tensors = load_tensors(directory)
    extras = {
        k.removeprefix(EXTRA_PREFIX): v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)
    }
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    # no random initialisation: the loaded tensors become the parameters (assign=True)
    model = _skeleton(card)
    _check_fits(directory, card, {k: tuple(v.shape) for k, v in state.items()}, state_shapes(model))
    floats = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(floats, assign=True)
    return model.to(device).eval(), card, extras
