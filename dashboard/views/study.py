"""Study viewer: every view of one study with its probability, map, ground truth and metadata.

Errors, Teaching, Label review and the Run map open it (``dashboard.study_link.open_study``);
``?study=ID`` in the address opens one directly. Window/level and zoom act on the decoded
radiograph (useful for 16-bit PNGs and DICOMs); maps come from the run's checkpoint through the
engine, as on Predict; boxes are the dataset's own (FracAtlas) where the run has them.
"""

from __future__ import annotations

import cv2
import numpy as np
import streamlit as st

from dashboard import inference, state
from dashboard.study_link import STUDY, current_study
from nextray_core.engine.answer import map_method
from nextray_core.errors import NextRayError
from nextray_core.explain import METHODS, TARGETS, overlay
from nextray_core.imaging import read_radiograph
from nextray_core.metrics import predicted_labels
from nextray_core.predict import study_table
from nextray_core.viewer import draw_boxes, image_key, run_boxes, window_level, zoom_crop

COLUMNS = 3

st.title("Study viewer")
run = state.require_run()
LABELS = {**dict(enumerate(run.class_names)), -1: "unknown"}
studies = study_table(run.predictions)
ids = studies["study_id"].tolist()
wanted = current_study()
if wanted not in ids:
    if wanted:
        st.warning(f"Study {wanted!r} is not in this run; showing the first study instead.")
    wanted = ids[0]
st.session_state[STUDY] = wanted
chosen = st.selectbox("Study", ids, index=ids.index(wanted), key="study_pick")
if chosen != wanted:
    st.session_state[STUDY] = chosen
st.query_params["study"] = chosen  # a page switch clears the address's parameters: set it here
study = studies[studies["study_id"] == chosen].iloc[0]
views = run.predictions[run.predictions["study_id"] == chosen]
threshold = state.threshold()
verdict = int(predicted_labels([study["probability"]], threshold)[0])

top = st.columns(4)
top[0].metric("Study probability", f"{study['probability']:.3f}", help="mean of its views")
top[1].metric("Truth", LABELS.get(int(study["label"]), "unknown"))
top[2].metric("Model at threshold", LABELS[verdict], help=f"threshold {threshold:.3f} (sidebar)")
top[3].metric("Views", len(views))
st.caption(f"region {study['region']} · patient {study['patient_id']} · split {study['split']}")

model = state.get_model()
negative, positive = run.class_names
controls = st.columns(4)
default_method = map_method(model.card) if model is not None else "cam"
method = controls[0].selectbox(
    "Map method", METHODS, index=METHODS.index(default_method), key="study_method",
    help=f"default: {default_method}, the method the checkpoint's card recommends",
)  # fmt: skip
target = controls[1].radio(
    "Evidence for",
    TARGETS,
    key="study_target",
    horizontal=True,
    format_func={"abnormal": positive, "normal": negative}.get,
)
opacity = controls[2].slider("Map opacity", 0.0, 1.0, 0.4, 0.05, key="study_opacity")
show_map = controls[3].toggle("Map", value=model is not None, key="study_map")
controls = st.columns(4)
centre = controls[0].slider("Window centre", 0.0, 1.0, 0.5, 0.01, key="study_centre")
width = controls[1].slider("Window width", 0.02, 1.0, 1.0, 0.01, key="study_width")
zoom = controls[2].slider("Zoom", 1.0, 6.0, 1.0, 0.5, key="study_zoom")
show_boxes = controls[3].toggle("Ground-truth boxes", value=True, key="study_boxes")
if zoom > 1:
    where = st.columns(2)
    zoom_x = where[0].slider("Zoom centre, across", 0.0, 1.0, 0.5, 0.01, key="study_zx")
    zoom_y = where[1].slider("Zoom centre, down", 0.0, 1.0, 0.5, 0.01, key="study_zy")
else:
    zoom_x = zoom_y = 0.5
if model is None:
    st.caption("No checkpoint selected: the views are shown without maps.")


@st.cache_data(show_spinner=False, max_entries=64)
def _boxes(path: str, stamp: float):
    return run_boxes(path, run.meta)


@st.cache_data(show_spinner=False, max_entries=128)
def _radiograph(path: str) -> tuple[np.ndarray, dict]:
    """Float pixels at display size (window/level is applied to these) and the metadata."""
    radiograph = read_radiograph(path, warn=False)
    pixels = radiograph.pixels
    scale = inference.DISPLAY_SIDE / max(pixels.shape)
    if scale < 1:
        size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return pixels, radiograph.metadata


boxes, boxes_source = _boxes(str(run.path), run.path.joinpath("run.json").stat().st_mtime)
if show_boxes:
    st.caption(f"Boxes: {boxes_source}" if boxes else f"No ground-truth boxes: {boxes_source}")

for start in range(0, len(views), COLUMNS):
    columns = st.columns(COLUMNS)
    chunk = views.iloc[start : start + COLUMNS]
    for column, (_, view) in zip(columns, chunk.iterrows(), strict=False):
        path = view["image_path"]
        with column.container(border=True):
            try:
                pixels, metadata = _radiograph(path)
                picture = window_level(pixels, centre, width)
                caption = f"p = {view['probability']:.3f}"
                if show_map and model is not None:
                    answer = inference.explain_path(path, method, target)
                    picture = overlay(picture, answer.cam, opacity=opacity)
                    shown = positive if target == "abnormal" else negative
                    caption += f" · {method}, evidence for {shown}"
                    if answer.ood_flag:
                        caption += f" · unlike the training images (OOD {answer.ood_distance:.1f})"
                view_boxes = boxes.get(image_key(view), []) if show_boxes else []
                if view_boxes:
                    picture = draw_boxes(picture, view_boxes)
                    caption += f" · {len(view_boxes)} box(es)"
                st.image(zoom_crop(picture, zoom, zoom_x, zoom_y), caption=caption, width="stretch")
                with st.expander("Image metadata"):
                    st.json({k: str(v) for k, v in metadata.items()}, expanded=True)
            except NextRayError as error:
                st.warning(f"cannot show {path}: {error}")
