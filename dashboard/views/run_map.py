"""Run map: every image of the run as a point, placed by its features, coloured by what matters.

The layout is the core's (``nextray_core.run_map.map_frame``: the first two principal components
of the pooled features stored in the run, or t-SNE on them). Select points (box or lasso) to
list their studies and open one in the Study viewer.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from dashboard import state
from dashboard.study_link import open_button
from nextray_core.errors import NextRayError
from nextray_core.run_map import (
    COLOUR_BY,
    FEATURES_FILE,
    TSNE_LIMIT,
    compute_run_features,
    map_frame,
    read_features,
)

LIMIT = 20_000  # points drawn with WebGL before a random sample is taken
SELECTED = "map_selected"

st.title("Run map")
run = state.require_run()
LABELS = dict(enumerate(run.class_names))


@st.cache_data(show_spinner=False, max_entries=8)
def _stored(path: str, stamp: float, n_images: int):
    return read_features(path, n_images)


@st.cache_data(show_spinner="Reading the run's images with its checkpoint…", max_entries=4)
def _computed(path: str, checkpoint: str, sha256: str):
    loaded = state.get_model(checkpoint)
    return compute_run_features(loaded.engine, run.predictions)


@st.cache_data(show_spinner="Laying out the map…", max_entries=16)
def _frame(path: str, stamp: float, threshold: float, method: str, _stored_features):
    return map_frame(run.predictions, _stored_features, threshold, method=method, limit=LIMIT)


features_path = run.path / FEATURES_FILE
stamp = features_path.stat().st_mtime if features_path.exists() else 0.0
try:
    stored = _stored(str(run.path), stamp, len(run.predictions))
except NextRayError as error:
    st.error(str(error))
    st.stop()
if stored is None:
    st.info(
        f"This run has no stored image features ({FEATURES_FILE}). Runs written by `nextray "
        "evaluate` now carry them; for this one run `nextray run-features "
        f"{state.short(str(run.path))}` (once, it re-reads the images with the run's "
        "checkpoint), or compute them here for this session."
    )
    card = state.get_card()
    if card is None:
        st.stop()
    checkpoint = st.session_state[state.CHECKPOINT]
    if not st.toggle(f"Compute now with {state.short(checkpoint)}", key="map_compute"):
        st.stop()
    stored = _computed(str(run.path), checkpoint, card.weights_sha256)
    stamp = -1.0

controls = st.columns([1, 1, 1])
method = controls[0].radio(
    "Layout",
    ["pca", "tsne"],
    horizontal=True,
    key="map_method",
    format_func={"pca": "PCA", "tsne": "t-SNE"}.get,
    help=f"PCA: the first two principal components (instant). t-SNE: neighbourhoods kept, "
    f"distances not; on at most {TSNE_LIMIT:,} images (seconds to a minute).",
)
colour = controls[1].selectbox("Colour by", COLOUR_BY, index=2, key="map_colour")
size = controls[2].slider("Point size", 2, 12, 5, key="map_size")
threshold = state.threshold()
frame = _frame(str(run.path), stamp, threshold, method, stored)
names = {0: LABELS[0], 1: LABELS[1], -1: "unlabelled"}
shown = frame.assign(label=frame["label"].map(names), prediction=frame["prediction"].map(names))
total, drawn = frame.attrs["total"], frame.attrs["drawn"]
cap = min(LIMIT, TSNE_LIMIT) if method == "tsne" else LIMIT
notes = [f"{drawn:,} of {total:,} images drawn"]
if drawn < total:
    notes.append(f"above {cap:,} images the map draws a seeded uniform random sample")
if method == "pca":
    notes.append(f"the two axes hold {stored.explained[:2].sum():.0%} of the feature variance")
notes.append(f"outcome at threshold {threshold:.3f}")
st.caption(" · ".join(notes))
if colour == "ood" and stored.ood_distance is None:
    st.caption("This run's checkpoint has no OOD statistics: no OOD distances to colour by.")
continuous = colour in ("ood", "probability")
figure = px.scatter(
    shown,
    x="x",
    y="y",
    color=colour,
    custom_data=["row"],
    hover_data={"study_id": True, "region": True, "probability": ":.3f", "x": False, "y": False},
    render_mode="webgl",
    color_continuous_scale="Viridis" if continuous else None,
    height=620,
)
figure.update_traces(marker={"size": size, "opacity": 0.75})
figure.update_layout(dragmode="lasso", xaxis_title=None, yaxis_title=None, legend_title=colour)
event = st.plotly_chart(
    figure,
    key="map_chart",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    width="stretch",
)
points = (event.selection.points if event else None) or []
rows = [p["customdata"][0] for p in points if p.get("customdata")]
if rows:
    st.session_state[SELECTED] = rows
rows = st.session_state.get(SELECTED, [])
if not rows:
    st.caption("Select points (box or lasso; the toolbar switches) to list their studies.")
    st.stop()
picked = run.predictions.iloc[sorted(set(rows))]
studies = picked.groupby("study_id", sort=False).agg(
    region=("region", "first"),
    label=("label", "first"),
    views_selected=("image_path", "size"),
    probability=("probability", "mean"),
)
st.subheader(f"{len(studies)} studies selected")
st.dataframe(studies, width="stretch")
for study in studies.index[:12]:
    open_button(study, key=f"map_open_{study}", label=f"Open {study}")
if len(studies) > 12:
    st.caption("The first 12 are listed as buttons; narrow the selection to open others.")
