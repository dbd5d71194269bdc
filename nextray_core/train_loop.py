"""One epoch of training and one pass of validation, under DDP or alone.

``train_one_epoch`` updates an ``EpochProgress`` after every step, so that a Ctrl-C
(``StopRequest``) can stop at a step boundary and save the position inside the epoch; a NaN or
infinite loss on any process stops every process with ``TrainingDivergedError``. ``evaluate``
gathers every shard and scores images and studies with the metrics module's definitions.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nextray_core.errors import NextRayError
from nextray_core.metrics import point_metrics, study_table
from nextray_core.train_data import weighted_bce
from nextray_core.train_device import Runtime, any_rank

StepHook = Callable[[int, int, float], None]


class TrainingDivergedError(NextRayError, FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch, step, lr and precision."""


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
        diverged, stopping = any_rank(
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


def validation_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    *,
    weights: torch.Tensor | None = None,
    study_ids: list[str] | None = None,
) -> dict[str, float]:
    """Loss, AUC and kappa at 0.5 per image and, given ``study_ids``, per study.

    Studies are metrics.study_table's (the mean of their views), scored by metrics.point_metrics:
    the numbers training selects on are the ones ``nextray evaluate`` reports.
    """
    losses = weighted_bce(
        torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(positions),
        weights, reduction="none",
    )  # fmt: skip
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    scored = point_metrics(labels.astype(np.int64), probs, 0.5)
    metrics = {
        "loss": float(losses.mean()),
        "auc": scored["auc"],
        "kappa": scored["kappa"],
        "images": len(labels),
    }
    if study_ids is not None:
        images = pd.DataFrame(
            {"study_id": np.asarray(study_ids)[positions], "probability": probs, "label": labels}
        )
        studies = study_table(images)
        scored = point_metrics(studies["label"].to_numpy(np.int64), studies["probability"], 0.5)
        metrics |= {"study_auc": scored["auc"], "study_kappa": scored["kappa"]}
        metrics["studies"] = len(studies)
    return metrics


def selection_score(metrics: dict[str, float], select: str) -> float:
    """Higher is better; NaN (e.g. AUC with one class) counts as worst."""
    value = {"loss": -metrics["loss"], "kappa": metrics.get("study_kappa", metrics["kappa"]),
             "auc": metrics.get("study_auc", metrics["auc"])}[select]  # fmt: skip
    return -math.inf if not math.isfinite(value) else float(value)
