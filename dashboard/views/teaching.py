"""Teaching: negative and positive cases side by side per region, and a quiz with a running score.

The classes are named as the run names them: normal/abnormal for MURA, not fractured/fractured
for the FracAtlas demo.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import inference, state
from nextray_core.errors import NextRayError
from nextray_core.metrics import predicted_labels

ALL = "all regions"

st.title("Teaching")
run = state.require_run()
LABELS = dict(enumerate(run.class_names))
model = state.get_model()
images = run.predictions[run.predictions["label"].isin([0, 1])]
if images.empty:
    st.warning("This run has no labelled images to teach with.")
    st.stop()

top = st.columns([1, 1.2, 1])
mode = top[0].radio("Mode", ["Side by side", "Quiz"], horizontal=True, key="teach_mode")
region = top[1].selectbox("Region", [ALL, *sorted(images["region"].unique())], key="teach_region")
opacity = top[2].slider("Map opacity", 0.0, 1.0, 0.4, 0.05, key="teach_opacity")
pool = images if region == ALL else images[images["region"] == region]
if model is None:
    st.caption("No checkpoint selected: maps are not available, only the images.")


def show(path: str, with_map: bool, caption: str, where=st) -> None:
    try:
        if with_map and model is not None:
            where.image(inference.blend(inference.explain_path(path), opacity), caption=caption)
        else:
            where.image(inference.read_display(path), caption=caption)
    except NextRayError as error:
        where.warning(f"cannot show {path}: {error}")


if mode == "Side by side":
    controls = st.columns(3)
    count = controls[0].slider("Cases per side", 1, 6, 3, key="teach_count")
    choice = controls[1].radio(
        "Which cases",
        ["clearest", "hardest", "random"],
        horizontal=True,
        key="teach_choice",
        help=f"clearest: the {LABELS[0]} cases with the lowest probability and the {LABELS[1]} "
        "cases with the highest; hardest: the reverse.",
    )
    maps = controls[2].toggle("Show the maps", value=False, key="teach_maps")
    if choice == "random" and controls[1].button("Shuffle", key="teach_shuffle"):
        st.session_state["teach_seed"] = st.session_state.get("teach_seed", 0) + 1
    seed = st.session_state.get("teach_seed", 0)
    sides = st.columns(2)
    for side, label in zip(sides, (0, 1), strict=True):
        cases = pool[pool["label"] == label]
        if choice == "random":
            cases = cases.sample(min(count, len(cases)), random_state=seed)
        else:
            ascending = (label == 1) == (choice == "hardest")  # clearest normals: low p first
            cases = cases.sort_values("probability", ascending=ascending).head(count)
        side.subheader(f"{LABELS[label].capitalize()} ({len(pool[pool['label'] == label])})")
        if cases.empty:
            side.caption(f"No {LABELS[label]} case for {region}.")
        for _, case in cases.iterrows():
            caption = f"{case['region']} · p = {case['probability']:.3f}"
            show(case["image_path"], maps, caption, side)
    st.stop()

# Quiz: the label is hidden until the learner answers.
quiz = st.session_state.setdefault("quiz", {"case": None, "answer": None, "right": 0, "asked": 0})


def draw() -> None:
    options = pool["image_path"].tolist()
    rng = np.random.default_rng(quiz["asked"] + 1000 * len(options))
    previous = quiz["case"]
    candidates = [p for p in options if p != previous] or options
    quiz["case"], quiz["answer"] = str(rng.choice(candidates)), None


def answer(choice: int) -> None:
    if quiz["answer"] is None:
        quiz["answer"] = choice
        quiz["asked"] += 1
        truth = images.loc[images["image_path"] == quiz["case"], "label"].iloc[0]
        quiz["right"] += int(choice == int(truth))


if quiz["case"] not in set(pool["image_path"]):
    draw()
case = pool[pool["image_path"] == quiz["case"]].iloc[0]
score = st.columns([1, 1, 3])
score[0].metric("Score", f"{quiz['right']} / {quiz['asked']}")
score[1].button(
    "Reset score", key="quiz_reset", on_click=quiz.update, kwargs={"right": 0, "asked": 0}
)

left, right = st.columns([3, 2])
with left:
    show(case["image_path"], quiz["answer"] is not None, f"{case['region']} radiograph")
with right:
    if quiz["answer"] is None:
        st.markdown(f"**{LABELS[0].capitalize()} or {LABELS[1]}?**")
        for label, key in ((0, "quiz_normal"), (1, "quiz_abnormal")):
            st.button(
                LABELS[label].capitalize(), key=key, on_click=answer, args=(label,), width="stretch"
            )
    else:
        truth = int(case["label"])
        (st.success if quiz["answer"] == truth else st.error)(
            f"{'Correct' if quiz['answer'] == truth else 'Not quite'}: this case is "
            f"**{LABELS[truth]}**."
        )
        verdict = LABELS[int(predicted_labels([case["probability"]], state.threshold())[0])]
        st.metric(f"Model probability ({LABELS[1]})", f"{case['probability']:.3f}")
        st.caption(f"Model verdict at threshold {state.threshold():.3f}: {verdict}.")
        if model is not None:
            st.caption(f"The map shows where the evidence for '{LABELS[1]}' lies.")
        st.button("Next case", key="quiz_next", on_click=draw, type="primary", width="stretch")
