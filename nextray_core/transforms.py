"""Preprocessing, defined once: training, evaluation, the CLI and the dashboard all use these.

The neXt-Ray report's recipe: resize the grayscale radiograph to 320x320, repeat it to three
channels and normalise with ImageNet's mean and standard deviation (the backbone's init expects
them). Training adds random horizontal flips and, optionally, rotations up to 30 degrees (the
MURA paper's augmentation). Inputs are 1xHxW tensors (uint8, or float in [0, 1]) so that a
decoded, resized uint8 cache and a freshly read file go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint needs to turn a radiograph into its input; stored in its card."""

    size: int = 320
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def as_image_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A 2-D grayscale array (uint8, or float in [0, 1]) -> 1xHxW tensor of the same dtype."""
    tensor = torch.as_tensor(pixels)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise ValueError(
            f"expected a 2-D grayscale image or 1xHxW tensor, got {tuple(tensor.shape)}"
        )
    return tensor


def resize_uint8(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size as uint8: the form cached for fast training."""
    tensor = as_image_tensor(pixels)
    if tensor.dtype != torch.uint8:
        tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
    resized = v2.functional.resize(tensor, [size, size], antialias=True)
    return resized[0].numpy()


def _to_three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1) if image.shape[-3] == 1 else image


def eval_transform(prep: Preprocessing = Preprocessing()) -> Transform:
    """1xHxW grayscale -> 3xSxS normalised float tensor, deterministic."""
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((prep.size, prep.size), antialias=True),
            v2.Lambda(_to_three_channels),
            v2.Normalize(list(prep.mean), list(prep.std)),
        ]
    )


@cache
def _eval(prep: Preprocessing) -> Transform:
    return eval_transform(prep)


def model_input(pixels: np.ndarray | torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """THE way from a decoded radiograph to the model's input, for every caller that answers
    (engine, predict, explain, bench, the demo's build): a 2-D grayscale image (uint8, as
    ``Radiograph.to_uint8()`` gives, or float in [0, 1]) -> 3 x S x S normalised float."""
    return _eval(prep)(as_image_tensor(torch.as_tensor(pixels)))


def model_batch(images, prep: Preprocessing) -> torch.Tensor:
    """``model_input`` for several images, stacked into B x 3 x S x S."""
    return torch.stack([model_input(image, prep) for image in images])


def train_transform(
    prep: Preprocessing = Preprocessing(),
    *,
    hflip: bool = True,
    rotation: float = 0.0,
    crop_scale: float = 1.0,
    contrast: float = 0.0,
    erase: float = 0.0,
) -> Transform:
    """The eval transform plus random augmentation.

    The report's flips and optional rotations (degrees), and three levers against shortcuts
    (film borders, markers, one scanner's contrast): random resized crops keeping at least
    ``crop_scale`` of the image, brightness/contrast jitter of up to ``contrast``, and random
    erasing of one rectangle with probability ``erase``.
    """
    steps: list[Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if crop_scale < 1.0:
        steps.append(
            v2.RandomResizedCrop((prep.size, prep.size), scale=(crop_scale, 1.0), antialias=True)
        )
    else:
        steps.append(v2.Resize((prep.size, prep.size), antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    if contrast:
        steps.append(v2.ColorJitter(brightness=contrast, contrast=contrast))
    steps += [v2.Lambda(_to_three_channels), v2.Normalize(list(prep.mean), list(prep.std))]
    if erase:
        steps.append(v2.RandomErasing(p=erase, scale=(0.02, 0.15), value=0.0))
    return v2.Compose(steps)
