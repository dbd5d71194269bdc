"""One radiograph -> the core engine's answer, cached per image; plus display helpers.

Uploads arrive as bytes and stay in memory (nothing is written to disk). Run images are read
from their paths. The engine comes from ``state.get_model`` (one shared per process); answers
are cached per (checkpoint, image, method, target), so re-drawing a page or moving the opacity
slider does not run the model again. All model logic lives in ``nextray_core.engine``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from dashboard import state
from nextray_core.engine import Answer, answer_radiograph
from nextray_core.engine.answer import map_method
from nextray_core.errors import NextRayError
from nextray_core.explain import overlay
from nextray_core.imaging import read_radiograph

DISPLAY_SIDE = 768  # longest side of the images shown: the browser would shrink them anyway
# Galleries (many tiles) ask for this method: one forward pass per tile through the engine's fast
# backend. A card's finer default (e.g. layercam-layer3) needs an fp32 backward per image, which
# is fine for one study at a time (Predict, Study viewer) but takes tens of seconds per gallery.
FAST_METHOD = "cam"


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
    method: str | None,
    target: str,
    version: str = "",
) -> Answer:
    """The core's answer, with ``pixels`` shrunk to the display size (what the cache keeps:
    full-size pixels would multiply its memory)."""
    loaded = state.get_model(checkpoint)
    if loaded is None:
        raise RuntimeError(f"checkpoint {checkpoint} could not be loaded")
    answer = answer_radiograph(loaded.engine, source, name, method=method, target=target)
    return replace(answer, pixels=_display_copy(answer.pixels))


def explain_upload(data: bytes, name: str, method: str | None = None, target: str = "abnormal"):
    """An uploaded file's bytes -> Answer; raises ImageReadError for a bad file."""
    loaded = _checkpoint()
    return _explain(loaded[0], loaded[1], data, name, method, target)


def explain_path(path: str, method: str | None = None, target: str = "abnormal") -> Answer:
    """A run image on disk -> Answer (ImageReadError if it is missing or unreadable)."""
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
    return _display_copy(read_radiograph(path, warn=False).to_uint8())


def blend(result: Answer, opacity: float, colormap: str = "jet") -> np.ndarray:
    """The map over the radiograph (the core's overlay), at the display size."""
    return overlay(result.pixels, result.cam, colormap=colormap, opacity=opacity)


def picture(
    path: str, opacity: float, with_map: bool = True, method: str | None = None
) -> tuple[np.ndarray | None, str]:
    """(image to show, note) for a run image: the map's overlay when a model is loaded (with_map),
    else the plain image; (None, why) when it cannot be read. ``method``: None for the card's
    map method, ``FAST_METHOD`` for a gallery tile."""
    try:
        if not with_map:
            return read_display(path), ""
        return blend(explain_path(path, method), opacity), ""
    except NextRayError as error:
        return None, f"cannot show this image: {error}"


def show_views(views, opacity: float, with_map: bool = True, method: str | None = None) -> None:
    """A study's views side by side, each with its probability (Errors, Label review)."""
    for column, (_, view) in zip(st.columns(max(4, len(views))), views.iterrows(), strict=False):
        shown, note = picture(view["image_path"], opacity, with_map, method)
        if shown is not None:
            column.image(shown, caption=f"p = {view['probability']:.3f}", width="stretch")
        else:
            column.warning(note)


def gallery_note(loaded) -> str | None:
    """The caption under a gallery of ``FAST_METHOD`` maps when the checkpoint's own method is
    another one (None when they are the same, or without a model)."""
    if loaded is None or map_method(loaded.card) == FAST_METHOD:
        return None
    return f"maps: {FAST_METHOD} (fast) — open a study for {map_method(loaded.card)}"
