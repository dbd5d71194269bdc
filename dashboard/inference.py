"""One radiograph -> probability, map and OOD flag through nextray_core, cached per image.

Uploads arrive as bytes and stay in memory (``read_radiograph`` reads bytes; nothing is written
to disk). Run images are read from their paths. The model comes from ``state.get_model`` (one
shared copy per process); results are cached per (checkpoint, image, method, target), so
re-drawing a page or moving the opacity slider does not run the model again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image

from dashboard import state
from nextray_core.errors import NotARadiographWarning
from nextray_core.explain import explain_batch, overlay
from nextray_core.imaging import read_radiograph
from nextray_core.transforms import as_image_tensor, eval_transform

DISPLAY_SIDE = 768  # longest side of the images shown: the browser would shrink them anyway


@dataclass(frozen=True)
class ViewResult:
    """What the pages show for one view."""

    name: str
    probability: float
    image: np.ndarray  # display-sized grayscale uint8
    cam: np.ndarray  # S x S in [0, 1]
    ood_distance: float | None
    ood_flag: bool
    ood_threshold: float | None
    notes: tuple[str, ...]
    metadata: dict


def _display_copy(pixels: np.ndarray) -> np.ndarray:
    image = Image.fromarray(pixels)
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return np.asarray(image)


@st.cache_data(show_spinner=False, max_entries=512)
def _explain(
    checkpoint: str,
    sha256: str,
    source: bytes | str,
    name: str,
    method: str,
    target: str,
    version: str = "",
) -> ViewResult:
    loaded = state.get_model(checkpoint)
    if loaded is None:
        raise RuntimeError(f"checkpoint {checkpoint} could not be loaded")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotARadiographWarning)
        radiograph = read_radiograph(source, name=name)
    pixels = radiograph.to_uint8()
    batch = eval_transform(loaded.card.prep)(as_image_tensor(torch.from_numpy(pixels)))[None]
    explained = explain_batch(loaded.model, batch, method=method, target=target)
    distance, flag, limit = None, False, None
    if loaded.ood is not None:
        distance = float(loaded.ood.score(explained.pooled_features)[0])
        flag, limit = bool(loaded.ood.flags(explained.pooled_features)[0]), loaded.ood.threshold
    return ViewResult(
        name=name,
        probability=float(explained.probabilities[0]),
        image=_display_copy(pixels),
        cam=explained.maps[0],
        ood_distance=distance,
        ood_flag=flag,
        ood_threshold=limit,
        notes=tuple(str(w.message) for w in caught),
        metadata=dict(radiograph.metadata),
    )


def explain_upload(data: bytes, name: str, method: str = "cam", target: str = "abnormal"):
    """An uploaded file's bytes -> ViewResult; raises ImageReadError for a bad file."""
    loaded = _checkpoint()
    return _explain(loaded[0], loaded[1], data, name, method, target)


def explain_path(path: str, method: str = "cam", target: str = "abnormal") -> ViewResult:
    """A run image on disk -> ViewResult (ImageReadError if it is missing or unreadable)."""
    loaded = _checkpoint()
    stamp = f"{Path(path).stat().st_mtime_ns}" if Path(path).exists() else ""
    return _explain(loaded[0], loaded[1], path, Path(path).name, method, target, stamp)


def _checkpoint() -> tuple[str, str]:
    path = st.session_state.get(state.CHECKPOINT)
    card = state.get_card(path)
    if card is None:
        raise RuntimeError("no checkpoint is selected")
    return path, card.weights_sha256


@st.cache_data(show_spinner=False, max_entries=256)
def read_display(path: str) -> np.ndarray:
    """A run image as display-sized grayscale uint8 (for pages without a model)."""
    return _display_copy(read_radiograph(path).to_uint8())


def blend(result: ViewResult, opacity: float, colormap: str = "jet") -> np.ndarray:
    """The map over the radiograph (the core's overlay), at the display size."""
    return overlay(result.image, result.cam, colormap=colormap, opacity=opacity)
