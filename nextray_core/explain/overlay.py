"""Heat-map overlays at the ORIGINAL image size.

The model saw the radiograph squashed to S x S; a map over that square, stretched back to the
original H x W, lands on the same anatomy (both axes are scaled independently, so fractions of
width and height are preserved). Display normalisation: ReLU, then divide by the map's
maximum, so 0 means "no evidence" and 1 the strongest evidence in this image (maps are not
comparable in absolute terms across images). Colours come from matplotlib's colormaps (a
pytorch-grad-cam dependency); without matplotlib, OpenCV's.

Blending: each pixel gets ``opacity * value`` of the colour, so regions without evidence show
the untouched radiograph and ``opacity`` is the opacity at the peak.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from nextray_core.errors import ConfigError

_CV2_MAPS = {
    name[len("COLORMAP_") :].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}


def _matplotlib_colormaps():
    try:
        import matplotlib
    except ImportError:
        return None
    return matplotlib.colormaps


def available_colormaps() -> list[str]:
    """Colormap names ``overlay`` accepts (matplotlib's if installed, else OpenCV's)."""
    registry = _matplotlib_colormaps()
    return sorted(registry) if registry is not None else sorted(_CV2_MAPS)


@lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """256 x 3 uint8 RGB lookup table for ``name`` (a table: fast and thread-safe to apply)."""
    registry = _matplotlib_colormaps()
    if registry is not None and name in registry:
        rgba = registry[name](np.linspace(0.0, 1.0, 256))
        return np.round(rgba[:, :3] * 255).astype(np.uint8)
    if registry is None and name in _CV2_MAPS:
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], _CV2_MAPS[name])
        return bgr[:, 0, ::-1].copy()
    shown = ", ".join(n for n in ("jet", "turbo", "inferno", "magma", "viridis", "hot"))
    raise ConfigError(
        f"unknown colormap {name!r}; try one of {shown} (all: nextray_core.explain."
        "available_colormaps())"
    )


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """ReLU, then divide by the maximum (all-zero if there is no positive evidence)."""
    cam = np.maximum(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def upsample_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` = (H, W), pixel centres aligned."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    height, width = shape
    if cam.shape == (height, width):
        return cam.copy()
    return cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)


def _gray_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def overlay(
    image_gray: np.ndarray,
    cam: np.ndarray,
    *,
    colormap: str = "jet",
    opacity: float = 0.4,
) -> np.ndarray:
    """H x W x 3 uint8 RGB: the radiograph with ``cam`` (any h x w) stretched over it."""
    if not 0.0 <= opacity <= 1.0:
        raise ConfigError(f"opacity must be between 0 and 1, got {opacity}")
    gray = _gray_float(image_gray)
    heat = normalise_map(upsample_map(normalise_map(cam), gray.shape))
    colour = colormap_lut(colormap)[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
    alpha = (opacity * heat)[..., None]
    blended = (1.0 - alpha) * (gray[..., None] * 255.0) + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
