"""What training reads: the train/val frames, the loss weights and the loaders.

Reproducibility lives here: the shuffling order is a function of (seed, epoch)
(``DistributedSampler``) and every image's augmentation a function of (seed, epoch, image),
whatever the number of workers or processes, and the sampler can skip the batches an
interrupted epoch already trained.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nextray_core.config import TrainConfig
from nextray_core.errors import DatasetError
from nextray_core.loader import RadiographDataset, build_cache
from nextray_core.train_device import Runtime
from nextray_core.transforms import Preprocessing, eval_transform, train_transform


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


def data_summary(config: TrainConfig, kind: str, train: pd.DataFrame, val: pd.DataFrame) -> dict:
    """The card's ``data`` section: what the model was trained and selected on."""
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
    """BCE on logits, each row weighted by its (normal, abnormal) pair from ``loss_weights``."""
    weight = None
    if weights is not None:
        pair = weights[positions.cpu()].to(logits.device, non_blocking=True)
        weight = torch.where(labels > 0.5, pair[:, 1], pair[:, 0])
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weight, reduction=reduction)


@dataclass
class Loaders:
    """The training loader (with its resumable sampler) and the validation loader."""

    train: DataLoader
    val: DataLoader
    sampler: EpochSampler


def build_loaders(
    config: TrainConfig, train: pd.DataFrame, val: pd.DataFrame, runtime: Runtime
) -> Loaders:
    """Loaders over the (optionally cached) images; each rank reads its own shard."""
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
    return Loaders(train_loader, val_loader, sampler)
