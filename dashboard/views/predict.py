"""Predict: upload the views of one study; each view's probability and map, the study's verdict."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import inference, state
from nextray_core.engine import answers_table
from nextray_core.engine.answer import map_method
from nextray_core.errors import NextRayError
from nextray_core.index import MURA_REGIONS
from nextray_core.metrics import predicted_labels, study_table
from nextray_core.options import METHODS, TARGETS
from nextray_core.predict import UNKNOWN_REGION

st.title("Predict")
st.caption(
    "Upload one or several views of ONE study (PNG, JPEG or DICOM). Files stay in memory; "
    "nothing is written to disk. Research and teaching only; not for clinical use."
)
loaded = state.get_model()
# the card's own words: "fractured" for the FracAtlas demo, "abnormal" for MURA models
negative, positive = loaded.card.class_names if loaded is not None else ("normal", "abnormal")
TARGET_NAMES = {"abnormal": positive, "normal": negative}  # the core's target -> the card's word
if loaded is None:
    state.no_model_message()
    st.stop()

left, middle, right, far = st.columns(4)
# the regions the model was trained on (hand/leg/hip/... for the FracAtlas demo), else MURA's
regions = loaded.card.data.get("regions") or list(MURA_REGIONS)
region = left.selectbox("Study type", [UNKNOWN_REGION, *regions], key="predict_region")
method = middle.selectbox(
    "Map method",
    METHODS,
    index=METHODS.index(map_method(loaded.card)),
    key="predict_method",
    help="Default: the method that localised best on this model's validation split (its card). "
    "cam: from the same forward pass (fast); the others use pytorch-grad-cam (*-layer3: 2x "
    "finer maps); scorecam runs one forward pass per feature channel (minutes on a CPU).",
)
target = right.radio(
    "Evidence for",
    TARGETS,
    key="predict_target",
    horizontal=True,
    format_func=TARGET_NAMES.get,
    help=f"where the evidence for '{positive}' or for '{negative}' lies",
)
opacity = far.slider("Map opacity", 0.0, 1.0, 0.45, 0.05, key="predict_opacity")

# The study lives in the session; the uploader is only its inbox, emptied after every intake
# (a new key), so that a new upload starts a new study unless views are added on purpose.
study_views: list[tuple[str, bytes]] = st.session_state.setdefault("predict_study", [])
inbox = st.session_state.setdefault("predict_inbox", 0)


def _take_upload(key: str) -> None:
    """Uploader callback (runs before the page): the files start or join the study."""
    new = [(upload.name, upload.getvalue()) for upload in st.session_state.get(key) or []]
    if not new:
        return
    add = st.session_state.get("predict_add_views", False)
    st.session_state["predict_study"] = [*st.session_state["predict_study"], *new] if add else new
    st.session_state["predict_inbox"] += 1
    st.session_state["predict_add_views"] = False  # the next upload starts anew


def _clear_study() -> None:
    st.session_state["predict_study"] = []
    st.session_state["predict_inbox"] += 1


st.toggle(
    "Add the next upload to this study",
    key="predict_add_views",
    disabled=not study_views,
    help="Off: a new upload starts a new study. On: its files join the current study's views.",
)
st.file_uploader(
    "Radiographs (several views of one study at once)",
    accept_multiple_files=True,
    key=f"predict_files_{inbox}",
    on_change=_take_upload,
    args=(f"predict_files_{inbox}",),
)
if not study_views:
    st.info("Upload one or more views to see the model's probability and where it looks.")
    st.stop()
names = ", ".join(name for name, _ in study_views)
left, right = st.columns([4, 1])
left.caption(f"Current study: {len(study_views)} view(s): {names}")
right.button("Clear study", key="predict_clear", on_click=_clear_study, width="stretch")

threshold = state.threshold()
results = []
for name, data in study_views:
    try:
        with st.spinner(f"Reading and scoring {name}…"):
            result = inference.explain_upload(data, name, method, target)
    except NextRayError as error:
        st.error(f"**{name}** could not be used: {error}", icon=":material/error:")
        continue
    results.append(result)
    with st.container(border=True):
        image_col, map_col, info_col = st.columns([2, 2, 1.4])
        image_col.image(result.pixels, caption=name, width="stretch")
        evidence = TARGET_NAMES[target]
        map_col.image(
            inference.blend(result, opacity),
            caption=f"{method}: evidence for {evidence}"
            if result.cam.any()  # an all-zero map would otherwise look like a failed overlay
            else f"{method}: no evidence for {evidence} anywhere in this image",
            width="stretch",
        )
        info_col.metric(f"Probability {positive}", f"{result.probability:.3f}")
        for note in result.findings:  # sanity checks and the OOD flag, one vocabulary
            (info_col.warning if note.excludes else info_col.info)(note.message)
        meta = result.metadata
        info_col.caption(
            f"{meta.get('format', '?').upper()} · {meta.get('width')}x{meta.get('height')} px · "
            f"{meta.get('bit_depth', '?')}-bit"
        )

st.session_state["predict_results"] = results  # this session's views (for downloads/tests)
if not results:
    st.warning("None of the uploaded files could be read; see the messages above.")
    st.stop()

keep = st.checkbox(
    "Count flagged views in the verdict",
    key="predict_keep_flagged",
    help="views flagged above (unlike the training images, inverted, a photo, ...) are left "
    "out of the study's mean by default",
)
study = study_table(answers_table(results, region=region), keep_flagged=keep).iloc[0]
st.subheader("Study")
c1, c2, c3 = st.columns(3)
c3.metric("Views scored", len(results))
c3.metric("Views used", int(study["n_views"]))
if study["n_left_out"]:
    st.warning(f"Left out of the verdict: {study['left_out']} (see each view's notes).")
if pd.isna(study["probability"]):
    c1.metric("Study probability (mean of views)", "none")
    c2.metric("Verdict", "no usable view")
    st.stop()
abnormal = bool(predicted_labels([study["probability"]], threshold)[0])
c1.metric("Study probability (mean of views)", f"{study['probability']:.3f}")
c2.metric("Verdict", positive if abnormal else negative, help=f"threshold {threshold:.3f}")
c2.caption(f"at threshold {threshold:.3f} (sidebar)")
if region == UNKNOWN_REGION:
    st.caption("Study type unknown: the region-specific results on the Metrics page do not apply.")
