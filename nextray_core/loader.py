"""Turn an index table into model-ready batches: one Dataset for training and evaluation.

Decoding a PNG and resizing it costs more CPU than a GPU step needs per image, so images can be
decoded and resized once into a uint8 cache (a memory-mapped ``.npy`` of N x S x S, keyed on the
image list and size) that later epochs and evaluations read with no decoding at all. Without a
cache, each item is read from disk through ``imaging.read_radiograph``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from nextray_core.imaging import read_radiograph
from nextray_core.transforms import as_image_tensor, resize_uint8


def load_resized(path: str, size: int) -> np.ndarray:
    """Decode and resize one image as training does (uint8 S x S)."""
    return resize_uint8(read_radiograph(path).pixels, size)


def cache_key(paths: list[str], size: int) -> str:
    """Same images in the same order at the same size -> same cache file."""
    digest = hashlib.sha256(f"{size}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    paths: list[str], size: int, directory: str | Path, *, workers: int | None = None
) -> np.ndarray:
    """Decode and resize every image once into ``directory``; reuse it when it exists.

    The array is written under a temporary name and renamed when complete, so an interrupted
    build never leaves a cache that looks finished.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"images-{size}px-{cache_key(paths, size)}.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r")
    tmp = target.with_name(target.name + ".tmp.npy")
    array = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size)
    )
    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        jobs = pool.map(load_resized, paths, [size] * len(paths))
        for position, image in enumerate(tqdm(jobs, total=len(paths), desc="caching images")):
            array[position] = image
    array.flush()
    del array
    os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


class RadiographDataset(Dataset):
    """Items are ``(image 3xSxS float, label float, row position)`` for the index's rows."""

    def __init__(
        self,
        index: pd.DataFrame,
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        cache: np.ndarray | None = None,
    ) -> None:
        if cache is not None and len(cache) != len(index):
            raise ValueError(f"cache holds {len(cache)} images, the index {len(index)}")
        self.paths = index["image_path"].tolist()
        self.labels = torch.tensor(index["label"].to_numpy(dtype="float32"))
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.cache is not None:
            image = torch.from_numpy(np.array(self.cache[position]))
        else:
            image = torch.from_numpy(read_radiograph(self.paths[position]).to_uint8())
        return self.transform(as_image_tensor(image)), self.labels[position], position
