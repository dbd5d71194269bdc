"""Training: plain functions (``train_one_epoch``, ``evaluate``, ``fit``) in the spirit of
torchvision's classification reference script, with DDP under torchrun.

Reproducibility is built in rather than bolted on: the shuffling order is a function of
(seed, epoch) (``DistributedSampler``) and every image's augmentation a function of
(seed, epoch, image), whatever the number of workers or processes. The global RNGs then drive
only dropout, so saving them at a step boundary and skipping the batches already done makes
``--resume`` continue bit for bit, from an epoch end or from a Ctrl-C in mid-epoch (on a GPU
only with ``--deterministic``, as cuDNN's fastest kernels are not deterministic).

Speed: bf16 autocast, channels-last, optional ``torch.compile``, the decoded uint8 image cache,
worker processes, pinned memory and non-blocking copies. Ctrl-C (or SIGTERM) asks the loop to
stop at the next step boundary, where it saves ``OUT/last`` with the resume state.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from nextray_core import train_state
from nextray_core.checkpoint import (
    EXTRA_PREFIX,
    ModelCard,
    load_tensors,
    save_checkpoint,
)
from nextray_core.config import TrainConfig
from nextray_core.engine.calibration import calibration_tensors
from nextray_core.errors import ConfigError, DatasetError, NextRayError
from nextray_core.hardware import device_name
from nextray_core.loader import RadiographDataset, build_cache
from nextray_core.model import build_model, describe_freeze
from nextray_core.transforms import Preprocessing, eval_transform, train_transform

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.json"
StepHook = Callable[[int, int, float], None]


class TrainingDivergedError(NextRayError, FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch, step, lr and precision."""


# ---------------------------------------------------------------- devices and processes
@dataclass(frozen=True)
class Runtime:
    """Where and how steps run: device, precision, memory format, this process's rank."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    show_progress: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision != "bf16":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group (env://) when there is one.

    NCCL on CUDA, gloo on the CPU. Without torchrun this is a single process of rank 0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", init_method="env://")
    return rank, world, resolved


# ---------------------------------------------------------------- data
class EpochSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, position) and can skip batches already trained."""

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter([(self.epoch, p) for p in list(super().__iter__())[self.skip :]])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class SeededAugmentation(Dataset):
    """Augment item ``position`` in ``epoch`` under a seed derived from (seed, epoch, position)."""

    def __init__(self, base: RadiographDataset, seed: int) -> None:
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        seed = int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.base[position]


def _ignore_sigint(_: int) -> None:
    # Workers keep serving batches on Ctrl-C; the main process stops at a step boundary.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def split_frames(
    index: pd.DataFrame, regions: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labelled 'train' and 'val' rows, restricted to ``regions`` when given."""
    if regions:
        present = sorted(index["region"].unique())
        unknown = sorted(set(regions) - set(present))
        if unknown:
            raise DatasetError(f"--regions {unknown} not in this dataset; it has {present}")
        index = index[index["region"].isin(regions)]
    labelled = index[index["label"].isin([0, 1])]
    frames = []
    for split in ("train", "val"):
        frame = labelled[labelled["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise DatasetError(
                f"no labelled images in the '{split}' split"
                + (f" for regions {list(regions)}" if regions else "")
                + "; training needs both 'train' and 'val' rows in the index"
            )
        frames.append(frame)
    return frames[0], frames[1]


def loss_weights(train: pd.DataFrame, frame: pd.DataFrame, loss: str) -> torch.Tensor | None:
    """Per row of ``frame``: [weight if normal, weight if abnormal], or None for plain BCE.

    Counted over TRAINING studies, per study type ('type-weighted', the MURA paper) or over all
    of them ('class-weighted'): w_abnormal = N / (A + N), w_normal = A / (A + N).
    """
    if loss == "bce":
        return None
    studies = train.drop_duplicates("study_id")
    key = studies["region"] if loss == "type-weighted" else pd.Series("all", index=studies.index)

    def pair(labels: pd.Series) -> tuple[float, float]:
        abnormal, normal = int((labels == 1).sum()), int((labels == 0).sum())
        return abnormal / (abnormal + normal), normal / (abnormal + normal)

    overall = pair(studies["label"])
    per_key = {k: pair(group) for k, group in studies["label"].groupby(key)}
    rows = frame["region"] if loss == "type-weighted" else pd.Series("all", index=frame.index)
    return torch.tensor([per_key.get(r, overall) for r in rows], dtype=torch.float32)


def weighted_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor,
    weights: torch.Tensor | None,
    reduction: str = "mean",
) -> torch.Tensor:
    weight = None
    if weights is not None:
        pair = weights[positions.cpu()].to(logits.device, non_blocking=True)
        weight = torch.where(labels > 0.5, pair[:, 1], pair[:, 0])
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weight, reduction=reduction)


# ---------------------------------------------------------------- one epoch, evaluation
@dataclass
class EpochProgress:
    """Where an epoch stands; updated in place so an interrupted epoch can be saved."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    busy: bool = False  # True while weights/optimizer/schedule are mid-update


class StopRequest:
    """Ctrl-C / SIGTERM handler: the first asks for a stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt  # second request: stop at once, nothing saved
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)


def _any_rank(flags: list[bool], runtime: Runtime) -> list[bool]:
    if runtime.world_size == 1:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    progress: EpochProgress,
    *,
    weights: torch.Tensor | None = None,
    stop: StopRequest | None = None,
    on_step: StepHook | None = None,
    desc: str = "",
) -> EpochProgress:
    """Train over ``loader`` (its remaining batches), updating ``progress`` after every step."""
    model.train()
    started = time.perf_counter() - progress.seconds
    bar = tqdm(
        loader,
        desc=desc,
        unit="batch",
        initial=progress.step,
        total=progress.step + len(loader),
        disable=None if runtime.show_progress and runtime.is_main else True,
    )
    for images, labels, positions in bar:
        progress.busy = True
        labels = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(runtime.to_device(images)).squeeze(1)
        loss = weighted_bce(logits.float(), labels, positions, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        diverged, stopping = _any_rank(
            [not math.isfinite(value), stop is not None and stop.requested], runtime
        )
        if diverged:
            raise TrainingDivergedError(
                f"the training loss became {value} at epoch {progress.epoch + 1}, step "
                f"{progress.step + 1}: lower the learning rate (--lr, now "
                f"{optimizer.param_groups[0]['lr']:g}) or train in --precision fp32 (now "
                f"{runtime.precision}); the last saved state is that of the previous epoch"
            )
        progress.step += 1
        progress.loss_sum += value * len(labels)
        progress.seen += len(labels)
        progress.seconds = time.perf_counter() - started
        progress.busy = False
        rate = progress.seen * runtime.world_size / max(progress.seconds, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}", refresh=False)
        if stopping:
            raise KeyboardInterrupt
        if on_step is not None:
            on_step(progress.epoch, progress.step, value)
    bar.close()
    return progress


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    *,
    weights: torch.Tensor | None = None,
    study_ids: list[str] | None = None,
) -> dict[str, float]:
    """Validation loss, AUC and kappa (at 0.5), per image and per study (mean of its views).

    Under DDP each rank scores its shard and the shards are gathered (duplicates from the
    sampler's padding dropped), so every rank gets the same numbers.
    """
    model.eval()
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for images, labels, positions in loader:
        with runtime.autocast():
            logits = model(runtime.to_device(images)).squeeze(1)
        chunks.append((positions, logits.float(), labels))
    positions = torch.cat([c[0] for c in chunks]).numpy()
    logits = torch.cat([c[1] for c in chunks]).cpu().numpy()
    labels = torch.cat([c[2] for c in chunks]).numpy()
    if runtime.world_size > 1:
        gathered: list[Any] = [None] * runtime.world_size
        dist.all_gather_object(gathered, (positions, logits, labels))
        positions, logits, labels = (np.concatenate(parts) for parts in zip(*gathered, strict=True))
    positions, first = np.unique(positions, return_index=True)
    logits, labels = logits[first], labels[first]
    return validation_metrics(logits, labels, positions, weights=weights, study_ids=study_ids)


def _auc_kappa(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    if len(np.unique(labels)) < 2:
        return math.nan, math.nan  # undefined with one class
    kappa = float(cohen_kappa_score(labels.astype(int), (probs >= 0.5).astype(int)))
    return float(roc_auc_score(labels, probs)), kappa


def validation_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    *,
    weights: torch.Tensor | None = None,
    study_ids: list[str] | None = None,
) -> dict[str, float]:
    losses = weighted_bce(
        torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(positions),
        weights, reduction="none",
    )  # fmt: skip
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    auc, kappa = _auc_kappa(labels, probs)
    metrics = {"loss": float(losses.mean()), "auc": auc, "kappa": kappa, "images": len(labels)}
    if study_ids is not None:
        frame = pd.DataFrame(
            {"study": np.asarray(study_ids)[positions], "prob": probs, "label": labels}
        )
        studies = frame.groupby("study").agg(prob=("prob", "mean"), label=("label", "max"))
        study_auc, study_kappa = _auc_kappa(studies["label"].to_numpy(), studies["prob"].to_numpy())
        metrics |= {"study_auc": study_auc, "study_kappa": study_kappa, "studies": len(studies)}
    return metrics


def selection_score(metrics: dict[str, float], select: str) -> float:
    """Higher is better; NaN (e.g. AUC with one class) counts as worst."""
    value = {"loss": -metrics["loss"], "kappa": metrics.get("study_kappa", metrics["kappa"]),
             "auc": metrics.get("study_auc", metrics["auc"])}[select]  # fmt: skip
    return -math.inf if not math.isfinite(value) else float(value)


# ---------------------------------------------------------------- the whole run
@dataclass
class FitResult:
    out_dir: Path
    best_dir: Path
    last_dir: Path
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.lr_factor, patience=config.plateau_patience
        )
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.lr_factor
        )
    return None


def _loaders(config: TrainConfig, train: pd.DataFrame, val: pd.DataFrame, runtime: Runtime):
    prep = Preprocessing(size=config.size)
    caches: list[np.ndarray | None] = [None, None]
    if config.cache_dir:
        for turn in ("main", "others"):  # rank 0 builds, the others then reuse
            if (turn == "main") == runtime.is_main:
                caches = [
                    build_cache(frame["image_path"].tolist(), config.size, config.cache_dir)
                    for frame in (train, val)
                ]
            if runtime.world_size > 1:
                dist.barrier()
    augment = train_transform(
        prep,
        hflip=config.hflip,
        rotation=config.rotation,
        crop_scale=config.crop_scale,
        contrast=config.contrast,
        erase=config.erase,
    )
    train_set = SeededAugmentation(RadiographDataset(train, augment, cache=caches[0]), config.seed)
    val_set = RadiographDataset(val, eval_transform(prep), cache=caches[1])
    sampler = EpochSampler(
        train_set, rank=runtime.rank, world_size=runtime.world_size, seed=config.seed
    )
    val_sampler = DistributedSampler(
        val_set, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=False
    )
    common = {
        "num_workers": config.workers,
        "pin_memory": runtime.device.type == "cuda",
        "persistent_workers": config.workers > 0,
        "worker_init_fn": _ignore_sigint if config.workers > 0 else None,
        # seeds only the workers; augmentation is seeded per item by SeededAugmentation
        "generator": torch.Generator().manual_seed(config.seed),
    }
    train_loader = DataLoader(train_set, config.batch_size, sampler=sampler, **common)
    val_loader = DataLoader(val_set, 2 * config.batch_size, sampler=val_sampler, **common)
    return train_loader, val_loader, sampler


def _card(
    config: TrainConfig, epoch: int, metrics: dict | None, data: dict, runtime: Runtime
) -> ModelCard:
    # what it ran on, resolved ("device": "auto" alone does not say); a resumed run records
    # the machine that wrote this epoch
    training = {
        **config.to_dict(),
        "epoch": epoch,
        "torch": torch.__version__,
        "device_used": str(runtime.device),
        "device_name": device_name(runtime.device),
        "processes": runtime.world_size,
    }
    licence = {}
    if data.get("kind") == "mura":
        licence["data"] = (
            "trained on Stanford MURA v1.1 under its research-use agreement (personal, "
            "non-commercial research); check it before sharing these weights"
        )
    return ModelCard(
        name=f"nextray-{config.arch}-{config.recipe}-epoch{epoch}",
        architecture=config.arch,
        preprocessing=Preprocessing(size=config.size).to_dict(),
        dropout=config.dropout,
        training=training,
        data=data,
        metrics={
            "val": {k: _json_safe(v) for k, v in metrics.items()},
            "selected_by": config.select,
        }
        if metrics
        else {},
        licence=licence,
    )


def _data_summary(config: TrainConfig, kind: str, train: pd.DataFrame, val: pd.DataFrame) -> dict:
    return {
        "kind": kind,
        "root": str(config.data),
        "regions": sorted(train["region"].unique()),
        "train_images": len(train),
        "train_studies": int(train["study_id"].nunique()),
        "val_images": len(val),
        "val_studies": int(val["study_id"].nunique()),
        "selection_split": "val",
    }


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def fit(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    index: pd.DataFrame | None = None,
    on_step: StepHook | None = None,
) -> FitResult:
    """Train per ``config``, writing ``OUT/best``, ``OUT/last``, the log and the config.

    ``index`` replaces loading ``config.data`` (tests, notebooks). ``on_step(epoch, step,
    loss)`` runs after every optimizer step; raising KeyboardInterrupt there acts as Ctrl-C.
    """
    rank, world, device = setup_distributed(config.device)
    try:
        return _fit(config, Path(out_dir), resume, index, on_step, rank, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config, out_dir, resume, index, on_step, rank, world, device) -> FitResult:
    runtime = Runtime(device, config.precision, config.channels_last, rank, world, config.progress)
    say = partial(print, flush=True) if runtime.is_main else (lambda *a, **k: None)
    if not resume and any((out_dir / name).exists() for name in ("last", "best")):
        raise ConfigError(
            f"{out_dir} already holds a training run; continue it with --resume {out_dir} "
            "or choose a new --out folder"
        )
    state = train_state.read_resume_files(train_state.find_last(out_dir)) if resume else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:  # bit-exact GPU resumes need this; the CPU is exact without it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

    kind = config.kind
    if index is None:
        from nextray_core.datasets import detect_dataset_kind, load_dataset

        if not config.data:
            raise ConfigError("no dataset given: pass --data PATH")
        kind = detect_dataset_kind(config.data) if kind == "auto" else kind
        index = load_dataset(kind, config.data, seed=config.data_seed)
    train, val = split_frames(index, config.regions)
    data = _data_summary(config, kind, train, val)
    train_w, val_w = (loss_weights(train, f, config.loss) for f in (train, val))

    _seed_everything(config.seed + rank)
    raw = build_model(
        config.arch, init=config.init, dropout=config.dropout, freeze_layers=config.freeze_layers
    )
    say(f"{config.arch}: {describe_freeze(raw)}; {len(train)} train / {len(val)} val images")
    raw.to(device)
    if config.channels_last:
        raw.to(memory_format=torch.channels_last)
    params = [p for p in raw.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = _build_scheduler(config, optimizer)
    position: dict[str, Any] = {**_start_of(0), "best_score": None, "best_epoch": 0}
    if state is not None:
        last = train_state.find_last(out_dir)
        _, tensors = load_tensors(last)  # verified against its card; extra.* are not weights
        raw.load_state_dict(
            {k: v.to(device) for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
        )
        optimizer.load_state_dict(state["optimizer_state"])  # moves the state to the params
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        position = state["position"]
        train_state.restore_rng(state["rng"][rank])
    core = nn.parallel.DistributedDataParallel(raw) if world > 1 else raw
    model = torch.compile(core) if config.compile else core
    eval_model = model if world == 1 else (torch.compile(raw) if config.compile else raw)
    train_loader, val_loader, sampler = _loaders(config, train, val, runtime)
    # real validation radiographs travel with every checkpoint: the inference engine checks
    # its faster backends against fp32 on them (nextray_core.engine)
    calibration = calibration_tensors(val, config.size, seed=config.seed) if runtime.is_main else {}

    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    history = train_state.read_log(out_dir / LOG_FILE, upto=position["epoch"]) if resume else []
    if runtime.is_main:
        train_state.write_log(out_dir / LOG_FILE, history)

    def save_last(epoch_done: int, metrics: dict | None, pos: dict) -> None:
        rng = [train_state.capture_rng()]
        if world > 1:
            rng = [None] * world
            dist.all_gather_object(rng, train_state.capture_rng())
        if runtime.is_main:

            def write(tmp: Path) -> None:
                save_checkpoint(
                    raw,
                    tmp,
                    _card(config, epoch_done, metrics, data, runtime),
                    extra_tensors=calibration,
                )
                train_state.write_resume_files(
                    tmp,
                    optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict() if scheduler else None,
                    position=pos,
                    rng=rng,
                )

            train_state.swap_in(write, out_dir / "last")
        if world > 1:
            dist.barrier()

    progress = EpochProgress(position["epoch"])
    if position["epoch"] >= config.epochs:
        say(f"all {position['epoch']} epochs are done; pass a larger --epochs to train on")
    with StopRequest() as stop:
        try:
            for epoch in range(position["epoch"], config.epochs):
                progress = EpochProgress(epoch)
                if position["epoch"] == epoch:  # resuming inside this epoch
                    for name in ("step", "loss_sum", "seen", "seconds"):
                        setattr(progress, name, position[name])
                sampler.set_position(epoch, progress.step * config.batch_size)
                lr = optimizer.param_groups[0]["lr"]
                train_one_epoch(
                    model, train_loader, optimizer, runtime, progress, weights=train_w,
                    stop=stop, on_step=on_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                )  # fmt: skip
                progress.busy = True  # evaluation, schedule and saves: no exact stop point
                metrics = evaluate(
                    eval_model, val_loader, runtime, weights=val_w,
                    study_ids=val["study_id"].tolist(),
                )  # fmt: skip
                if scheduler is not None:
                    args = (metrics["loss"],) if config.scheduler == "plateau" else ()
                    scheduler.step(*args)
                totals = torch.tensor([progress.loss_sum, progress.seen], dtype=torch.float64)
                if world > 1:
                    totals = totals.to(device)
                    dist.all_reduce(totals)
                loss_sum, seen = totals.tolist()
                row = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(seen, 1),
                    **{f"val_{k}": _json_safe(v) for k, v in metrics.items()},
                    "lr": lr,
                    "images_per_s": seen / max(progress.seconds, 1e-9),
                    "seconds": progress.seconds,
                }
                history.append(row)
                score = selection_score(metrics, config.select)
                best = position["best_score"]
                improved = best is None or score > best
                position = {
                    **_start_of(epoch + 1),
                    "best_score": score if improved else best,
                    "best_epoch": epoch + 1 if improved else position["best_epoch"],
                }
                if runtime.is_main:
                    train_state.append_log(out_dir / LOG_FILE, row)
                    say(_describe(row, improved))
                    if improved:
                        card = _card(config, epoch + 1, metrics, data, runtime)
                        train_state.swap_in(
                            lambda tmp, card=card: save_checkpoint(
                                raw, tmp, card, extra_tensors=calibration
                            ),
                            out_dir / "best",
                        )
                save_last(epoch + 1, metrics, position)
        except KeyboardInterrupt:
            if progress.busy:
                say(f"stopped at once; the state of epoch {progress.epoch} is in {out_dir}/last")
                raise
            save_last(progress.epoch, None, {**position, "epoch": progress.epoch,
                      "step": progress.step, "loss_sum": progress.loss_sum,
                      "seen": progress.seen, "seconds": progress.seconds})  # fmt: skip
            say(
                f"interrupted in epoch {progress.epoch + 1} after step {progress.step}; saved "
                f"{out_dir / 'last'}. Continue with: nextray train --resume {out_dir}",
                file=sys.stderr,
            )
            raise
    return FitResult(out_dir, out_dir / "best", out_dir / "last", position["best_epoch"], history)


def _start_of(epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "step": 0, "loss_sum": 0.0, "seen": 0, "seconds": 0.0}


def _describe(row: dict, improved: bool) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss "
        f"{fmt(row['val_loss'])}, AUC {fmt(row['val_auc'])}, kappa {fmt(row['val_kappa'])} "
        f"(study AUC {fmt(row.get('val_study_auc'))}, kappa {fmt(row.get('val_study_kappa'))}), "
        f"lr {row['lr']:.2g}, {row['images_per_s']:.1f} img/s, {row['seconds']:.0f} s"
        + (" *best*" if improved else "")
    )
