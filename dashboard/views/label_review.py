"""Label review: the studies whose label the model most confidently disagrees with, and marks.

The ranking is the core's (``nextray_core.label_errors``: confident learning on the run's study
probabilities). A reviewer marks each study; the marks live in this session only and leave as a
CSV download (re-importable here), never written into the data or the run.
"""

from __future__ import annotations

import streamlit as st

from dashboard import inference, state
from dashboard.study_link import open_button
from nextray_core.errors import NextRayError
from nextray_core.label_errors import MARKS, marks_csv, rank_label_errors, read_marks

MARKS_KEY, NOTES_KEY = "label_marks", "label_notes"
UNMARKED = "not marked"

st.title("Label review")
run = state.require_run()
LABELS = dict(enumerate(run.class_names))
st.caption(
    "Studies ranked by how confidently the model disagrees with their label (confident "
    "learning: a study is flagged when the probability of the other class reaches that class's "
    "mean self-confidence). A high rank means *look here first*, not *the label is wrong*. "
    "Meaningful only for a run on data the model did not train on."
)


@st.cache_data(show_spinner=False, max_entries=16)
def _ranking(path: str, stamp: float):
    return rank_label_errors(run.predictions)


try:
    ranked = _ranking(str(run.path), run.path.joinpath("predictions.csv").stat().st_mtime)
except NextRayError as error:
    st.warning(str(error))
    st.stop()
marks: dict[str, str] = st.session_state.setdefault(MARKS_KEY, {})
notes: dict[str, str] = st.session_state.setdefault(NOTES_KEY, {})
model = state.get_model()

low, high = ranked.attrs["thresholds"]
st.markdown(
    f"**{int(ranked['flagged'].sum())}** of {len(ranked)} labelled studies flagged. Class "
    f"thresholds: {LABELS[0]} {low:.3f}, {LABELS[1]} {high:.3f}. Marked so far: **{len(marks)}**."
)

controls = st.columns([2, 1, 1, 1])
regions = controls[0].multiselect(
    "Regions", sorted(ranked["region"].unique()), placeholder="all regions", key="lr_regions"
)
only_flagged = controls[1].toggle("Flagged only", value=True, key="lr_flagged")
per_page = controls[2].number_input("Studies per page", 1, 50, 5, key="lr_per_page")
opacity = controls[3].slider("Map opacity", 0.0, 1.0, 0.4, 0.05, key="lr_opacity")
shown = ranked[ranked["region"].isin(regions)] if regions else ranked
shown = shown[shown["flagged"]] if only_flagged else shown
pages = max(1, -(-len(shown) // int(per_page)))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="lr_page")
chunk = shown.iloc[(page - 1) * int(per_page) : page * int(per_page)]

with st.expander("Marks: export or import", expanded=False):
    st.download_button(
        "Download marks (CSV)",
        marks_csv(marks, notes),
        file_name=f"{run.path.name}-label-marks.csv",
        mime="text/csv",
        key="lr_download",
        disabled=not marks,
    )
    upload = st.file_uploader("Import marks (a CSV exported here)", type="csv", key="lr_upload")
    if upload is not None and st.session_state.get("lr_imported") != upload.file_id:
        try:
            imported, imported_notes = read_marks(upload)
        except NextRayError as error:
            st.error(str(error))
        else:
            marks.update(imported)
            notes.update(imported_notes)
            st.session_state["lr_imported"] = upload.file_id
            st.success(f"imported {len(imported)} mark(s)")


def _set_mark(study: str) -> None:
    choice = st.session_state[f"lr_mark_{study}"]
    if choice == UNMARKED:
        marks.pop(study, None)
    else:
        marks[study] = choice


if chunk.empty:
    st.success("No study matches these filters.")
    st.stop()
if note := inference.gallery_note(model):
    st.caption(note)
for _, row in chunk.iterrows():
    study = row["study_id"]
    with st.container(border=True):
        head = st.columns([3, 2, 1])
        head[0].markdown(
            f"**#{row['rank']} · {study}** · {row['region']} · "
            f"label **{LABELS[int(row['label'])]}**"
            f" · study probability {row['probability']:.3f}"
            + (" · flagged" if row["flagged"] else "")
        )
        key = f"lr_mark_{study}"
        st.session_state[key] = marks.get(study, UNMARKED)
        head[1].radio(
            "Mark",
            [UNMARKED, *MARKS],
            key=key,
            horizontal=True,
            label_visibility="collapsed",
            on_change=_set_mark,
            args=(study,),
        )
        with head[2]:
            open_button(study, key=f"lr_open_{study}", label="Open study")
        views = run.predictions[run.predictions["study_id"] == study]
        inference.show_views(views, opacity, model is not None, inference.FAST_METHOD)
