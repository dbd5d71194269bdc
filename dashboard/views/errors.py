"""Errors: false positives and false negatives at the current threshold, most confident first."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import inference, state
from dashboard.study_link import open_button
from nextray_core.metrics import predicted_labels
from nextray_core.predict import study_table

COLUMNS = 4

st.title("Errors")
run = state.require_run()
model = state.get_model()
if model is None:
    st.caption("No checkpoint selected: images are shown without maps.")

threshold = state.threshold()
images = run.predictions[run.predictions["label"].isin([0, 1])].copy()
images["predicted"] = predicted_labels(images["probability"].to_numpy(), threshold)
wrong = images[images["predicted"] != images["label"]].copy()
wrong["kind"] = np.where(wrong["label"] == 0, "false positive", "false negative")
wrong["confidence"] = (wrong["probability"] - threshold).abs()  # how far past the threshold

filters = st.columns([2, 2, 1, 1])
show = filters[0].radio(
    "Show", ["both", "false positives", "false negatives"], horizontal=True, key="errors_kind"
)
kinds = ["false positive", "false negative"] if show == "both" else [show.removesuffix("s")]
regions = filters[1].multiselect(
    "Regions", sorted(images["region"].unique()), placeholder="all regions", key="errors_regions"
)
limit = filters[2].number_input("Tiles", 1, 200, 12, key="errors_limit")
opacity = filters[3].slider("Map opacity", 0.0, 1.0, 0.4, 0.05, key="errors_opacity")
shown = wrong[wrong["kind"].isin(kinds) & (wrong["region"].isin(regions) if regions else True)]
shown = shown.sort_values("confidence", ascending=False)

counts = wrong["kind"].value_counts()
st.markdown(
    f"At threshold **{threshold:.3f}**, among {len(images)} labelled images: false positives "
    f"**{counts.get('false positive', 0)}**, false negatives **{counts.get('false negative', 0)}**"
    f". Showing the {min(len(shown), int(limit))} most confident of {len(shown)} matching "
    "(furthest from the threshold first)."
)


def _open(study: str) -> None:
    st.session_state["errors_open"] = study


opened = st.session_state.get("errors_open")
if opened is not None:
    views = run.predictions[run.predictions["study_id"] == opened]
    with st.container(border=True):
        head, close = st.columns([5, 1])
        head.subheader(f"Study {opened}")
        close.button("Close", key="errors_close", on_click=_open, args=(None,))
        open_button(opened, key="errors_viewer", where=close, label="Study viewer")
        label = views["label"].iloc[0] if len(views) else -1
        study_p = study_table(views)["probability"].iloc[0] if len(views) else float("nan")
        st.caption(
            f"{views['region'].iloc[0] if len(views) else '?'} · truth: "
            f"{dict(enumerate(run.class_names)).get(int(label), 'unknown')} · {len(views)} view(s)"
            f" · study probability {study_p:.3f}"
        )
        inference.show_views(views, opacity, with_map=model is not None)

if shown.empty:
    st.success("No errors match these filters at this threshold.")
    st.stop()
if note := inference.gallery_note(model):
    st.caption(note)
for start in range(0, min(len(shown), int(limit)), COLUMNS):
    chunk = shown.iloc[start : min(start + COLUMNS, int(limit))]
    for column, (_, row) in zip(st.columns(COLUMNS), chunk.iterrows(), strict=False):
        with column.container(border=True):
            picture, note = inference.picture(
                row["image_path"], opacity, model is not None, inference.FAST_METHOD
            )
            if picture is not None:
                st.image(picture, width="stretch")
            else:
                st.warning(note)
            st.caption(f"**{row['kind']}** · {row['region']} · p = {row['probability']:.3f}")
            st.button(
                "Open study",
                key=f"open_{row['image_path']}",
                on_click=_open,
                args=(row["study_id"],),
                width="stretch",
            )
