"""Training: plain functions (``train_one_epoch``, ``evaluate``, ``fit``) in the spirit of
torchvision's classification reference script, with DDP under torchrun.

``fit`` is a few named steps over small modules: ``_prepare`` (data, model, optimizer and
loaders), ``_restore`` (a ``--resume``), ``_run_epoch`` (train, validate, log, keep the best)
and ``_save_last`` (the resume point). The device and processes live in train_device, the
data in train_data, one epoch and validation in train_loop, the resume files in train_state.

Reproducibility is built in rather than bolted on: the shuffling and every image's augmentation
are functions of the seed (train_data), the global RNGs then drive only dropout, so saving them
at a step boundary and skipping the batches already done makes ``--resume`` continue bit for bit,
from an epoch end or from a Ctrl-C in mid-epoch (on a GPU only with ``--deterministic``, as
cuDNN's fastest kernels are not deterministic). A resume needs the same number of processes.

Speed: bf16 autocast, channels-last, optional ``torch.compile``, the decoded uint8 image cache,
worker processes, pinned memory and non-blocking copies. Ctrl-C (or SIGTERM) asks the loop to
stop at the next step boundary, where it saves ``OUT/last`` with the resume state.

Training never imports the inference engine: the release step (threshold, OOD statistics, the
engine's calibration sample) completes a checkpoint after training.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from nextray_core import train_state
from nextray_core.checkpoint import EXTRA_PREFIX, ModelCard, load_tensors, save_checkpoint
from nextray_core.config import TrainConfig
from nextray_core.errors import ConfigError
from nextray_core.hardware import device_name
from nextray_core.model import build_model, describe_freeze
from nextray_core.train_data import (
    EpochSampler,
    Loaders,
    SeededAugmentation,
    build_loaders,
    data_summary,
    loss_weights,
    split_frames,
    weighted_bce,
)
from nextray_core.train_device import Runtime, resolve_device, setup_distributed
from nextray_core.train_loop import (
    EpochProgress,
    StepHook,
    StopRequest,
    TrainingDivergedError,
    evaluate,
    selection_score,
    train_one_epoch,
    validation_metrics,
)
from nextray_core.transforms import Preprocessing

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "EpochProgress",
    "EpochSampler",
    "FitResult",
    "Runtime",
    "SeededAugmentation",
    "StopRequest",
    "TrainingDivergedError",
    "evaluate",
    "fit",
    "loss_weights",
    "resolve_device",
    "selection_score",
    "setup_distributed",
    "split_frames",
    "train_one_epoch",
    "validation_metrics",
    "weighted_bce",
]

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.json"


# ---------------------------------------------------------------- the whole run
@dataclass
class FitResult:
    out_dir: Path
    best_dir: Path
    last_dir: Path
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Session:
    """What one training run holds between its steps."""

    config: TrainConfig
    out_dir: Path
    runtime: Runtime
    val: pd.DataFrame
    data: dict
    train_weights: torch.Tensor | None
    val_weights: torch.Tensor | None
    raw: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loaders: Loaders
    position: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # raw, DDP-wrapped and/or compiled: what train steps call
    eval_model: nn.Module | None = None

    def say(self, *args: Any, **kwargs: Any) -> None:
        if self.runtime.is_main:
            print(*args, **{"flush": True, **kwargs})


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
    runtime = Runtime(device, config.precision, config.channels_last, rank, world, config.progress)
    try:
        return _fit(config, Path(out_dir), resume, index, on_step, runtime)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    config: TrainConfig,
    out_dir: Path,
    resume: bool,
    index: pd.DataFrame | None,
    on_step: StepHook | None,
    runtime: Runtime,
) -> FitResult:
    state = _read_resume(out_dir, runtime) if resume else None
    if state is None and any((out_dir / name).exists() for name in ("last", "best")):
        raise ConfigError(
            f"{out_dir} already holds a training run; continue it with --resume {out_dir} "
            "or choose a new --out folder"
        )
    session = _prepare(config, out_dir, index, runtime)
    if state is not None:
        _restore(session, state)
    _distribute(session)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        train_state.write_log(out_dir / LOG_FILE, session.history)

    start = session.position["epoch"]
    if start >= config.epochs:
        session.say(f"all {start} epochs are done; pass a larger --epochs to train on")
    progress = EpochProgress(start)
    with StopRequest() as stop:
        try:
            for epoch in range(start, config.epochs):
                progress = EpochProgress(epoch)
                _run_epoch(session, progress, stop, on_step)
        except KeyboardInterrupt:
            _stop(session, progress)
            raise
    position = session.position
    return FitResult(out_dir, out_dir / "best", out_dir / "last", position["best_epoch"],
                     session.history)  # fmt: skip


def _read_resume(out_dir: Path, runtime: Runtime) -> dict[str, Any]:
    """The resume state, refused when it was written by another number of processes."""
    state = train_state.read_resume_files(train_state.find_last(out_dir))
    # older runs did not record it; they kept one RNG state per process
    saved = int(state["position"].get("world_size", len(state["rng"])))
    if saved != runtime.world_size:
        raise ConfigError(
            f"{out_dir} was trained by {saved} process(es) and is resumed by "
            f"{runtime.world_size}: the data shards, the batches already done and the RNG states "
            f"are per process, so an exact resume needs the same count. Resume with {saved} "
            f"process(es) in all (torchrun's --nnodes x --nproc-per-node = {saved}), or start a "
            f"new run from these weights with --init {out_dir / 'last'} --out NEW_FOLDER"
        )
    return state


def _prepare(
    config: TrainConfig, out_dir: Path, index: pd.DataFrame | None, runtime: Runtime
) -> _Session:
    """Step 1: the data, the model, the optimizer and schedule, and the loaders."""
    if runtime.device.type == "cuda":
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

    _seed_everything(config.seed + runtime.rank)
    raw = build_model(
        config.arch, init=config.init, dropout=config.dropout, freeze_layers=config.freeze_layers
    )
    raw.to(runtime.device)
    if config.channels_last:
        raw.to(memory_format=torch.channels_last)
    params = [p for p in raw.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    session = _Session(
        config=config,
        out_dir=out_dir,
        runtime=runtime,
        val=val,
        data=data_summary(config, kind, train, val),
        train_weights=loss_weights(train, train, config.loss),
        val_weights=loss_weights(train, val, config.loss),
        raw=raw,
        optimizer=optimizer,
        scheduler=_build_scheduler(config, optimizer),
        loaders=build_loaders(config, train, val, runtime),
        position={**_start_of(0), "best_score": None, "best_epoch": 0},
    )
    session.say(
        f"{config.arch}: {describe_freeze(raw)}; {len(train)} train / {len(val)} val images"
    )
    return session


def _restore(session: _Session, state: dict[str, Any]) -> None:
    """Step 2 (``--resume``): weights, optimizer, schedule, position, RNGs and the log."""
    _, tensors = load_tensors(train_state.find_last(session.out_dir))  # verified against its card
    session.raw.load_state_dict(
        {k: v.to(session.runtime.device) for k, v in tensors.items()
         if not k.startswith(EXTRA_PREFIX)}
    )  # fmt: skip
    session.optimizer.load_state_dict(state["optimizer_state"])  # moves the state to the params
    if session.scheduler is not None:
        session.scheduler.load_state_dict(state["scheduler"])
    session.position = state["position"]
    train_state.restore_rng(state["rng"][session.runtime.rank])
    log = session.out_dir / LOG_FILE
    session.history = train_state.read_log(log, upto=session.position["epoch"])


def _distribute(session: _Session) -> None:
    """DDP across processes and ``torch.compile``, over the (restored) raw model."""
    config, raw, world = session.config, session.raw, session.runtime.world_size
    core = nn.parallel.DistributedDataParallel(raw) if world > 1 else raw
    session.model = torch.compile(core) if config.compile else core
    compiled_raw = torch.compile(raw) if config.compile else raw
    session.eval_model = session.model if world == 1 else compiled_raw


def _run_epoch(
    session: _Session, progress: EpochProgress, stop: StopRequest, on_step: StepHook | None
) -> None:
    """Step 3: train one epoch (or its rest), validate, log, keep the best, save the last."""
    config, runtime, epoch = session.config, session.runtime, progress.epoch
    position = session.position
    if position["epoch"] == epoch:  # resuming inside this epoch
        for name in ("step", "loss_sum", "seen", "seconds"):
            setattr(progress, name, position[name])
    session.loaders.sampler.set_position(epoch, progress.step * config.batch_size)
    lr = session.optimizer.param_groups[0]["lr"]
    train_one_epoch(
        session.model, session.loaders.train, session.optimizer, runtime, progress,
        weights=session.train_weights, stop=stop, on_step=on_step,
        desc=f"epoch {epoch + 1}/{config.epochs}",
    )  # fmt: skip
    progress.busy = True  # evaluation, schedule and saves: no exact stop point
    metrics = evaluate(
        session.eval_model, session.loaders.val, runtime, weights=session.val_weights,
        study_ids=session.val["study_id"].tolist(),
    )  # fmt: skip
    if session.scheduler is not None:
        args = (metrics["loss"],) if config.scheduler == "plateau" else ()
        session.scheduler.step(*args)
    totals = torch.tensor([progress.loss_sum, progress.seen], dtype=torch.float64)
    if runtime.world_size > 1:
        totals = totals.to(runtime.device)
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
    session.history.append(row)
    score = selection_score(metrics, config.select)
    best = position["best_score"]
    improved = best is None or score > best
    session.position = {
        **_start_of(epoch + 1),
        "best_score": score if improved else best,
        "best_epoch": epoch + 1 if improved else position["best_epoch"],
    }
    if runtime.is_main:
        train_state.append_log(session.out_dir / LOG_FILE, row)
        session.say(_describe(row, improved))
        if improved:
            card = _card(session, epoch + 1, metrics)
            train_state.swap_in(
                lambda tmp: save_checkpoint(session.raw, tmp, card), session.out_dir / "best"
            )
    _save_last(session, epoch + 1, metrics, session.position)


def _save_last(session: _Session, epoch_done: int, metrics: dict | None, position: dict) -> None:
    """Step 4: ``OUT/last``, the weights plus everything an exact ``--resume`` needs."""
    runtime = session.runtime
    rng = [train_state.capture_rng()]
    if runtime.world_size > 1:
        rng = [None] * runtime.world_size
        dist.all_gather_object(rng, train_state.capture_rng())
    if runtime.is_main:

        def write(tmp: Path) -> None:
            save_checkpoint(session.raw, tmp, _card(session, epoch_done, metrics))
            train_state.write_resume_files(
                tmp,
                optimizer_state=session.optimizer.state_dict(),
                scheduler_state=session.scheduler.state_dict() if session.scheduler else None,
                position={**position, "world_size": runtime.world_size},
                rng=rng,
            )

        train_state.swap_in(write, session.out_dir / "last")
    if runtime.world_size > 1:
        dist.barrier()


def _stop(session: _Session, progress: EpochProgress) -> None:
    """Ctrl-C: save the position inside the epoch when it stopped at a step boundary."""
    out_dir = session.out_dir
    if progress.busy:
        session.say(f"stopped at once; the state of epoch {progress.epoch} is in {out_dir}/last")
        return
    inside = {name: getattr(progress, name) for name in ("step", "loss_sum", "seen", "seconds")}
    _save_last(
        session, progress.epoch, None, {**session.position, "epoch": progress.epoch, **inside}
    )
    session.say(
        f"interrupted in epoch {progress.epoch + 1} after step {progress.step}; saved "
        f"{out_dir / 'last'}. Continue with: nextray train --resume {out_dir}",
        file=sys.stderr,
    )


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


def _card(session: _Session, epoch: int, metrics: dict | None) -> ModelCard:
    config, runtime = session.config, session.runtime
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
    if session.data.get("kind") == "mura":
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
        data=session.data,
        metrics={
            "val": {k: _json_safe(v) for k, v in metrics.items()},
            "selected_by": config.select,
        }
        if metrics
        else {},
        licence=licence,
    )


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


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
