"""Teaching: negative and positive cases side by side per region, and a quiz.

The quiz draws cases with the class mix the educator chooses (balanced by default), without
repeats until the pool is used up (nextray_core.quiz), hides the label and the map until the
learner answers, keeps the learner's score per class and lists the missed cases for review.
Keys: 1 and 2 answer, Enter goes on. The classes are named as the run names them:
normal/abnormal for MURA, not fractured/fractured for the FracAtlas demo.
"""

from __future__ import annotations

import streamlit as st

from dashboard import inference, state
from dashboard.study_link import open_button
from nextray_core.errors import NextRayError
from nextray_core.metrics import predicted_labels
from nextray_core.quiz import Attempt, Quiz

ALL = "all regions"
MIXES = ("balanced", "the run's own mix", "choose the share")
KEYS = ("1", "2")  # answer LABELS[0] / LABELS[1]
NEXT_KEY = "Enter"

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


def show(path: str, with_map: bool, caption: str, where=st, method: str | None = None) -> None:
    try:
        if with_map and model is not None:
            answer = inference.explain_path(path, method)
            where.image(inference.blend(answer, opacity), caption=caption, width="stretch")
        else:
            where.image(inference.read_display(path), caption=caption, width="stretch")
    except NextRayError as error:
        where.warning(f"cannot show {path}: {error}")


def verdict(probability: float) -> str:
    return LABELS[int(predicted_labels([probability], state.threshold())[0])]


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
    if maps and (note := inference.gallery_note(model)):
        st.caption(note)
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
            show(case["image_path"], maps, caption, side, inference.FAST_METHOD)
            open_button(case["study_id"], f"teach_open_{case['image_path']}", side, "Study viewer")
    st.stop()

# Quiz: the label and the map are hidden until the learner answers.
settings = st.columns([1.4, 1, 0.6])
mix = settings[0].radio(
    "Class mix",
    MIXES,
    horizontal=True,
    key="quiz_mix",
    help=f"balanced: half {LABELS[1]}, half {LABELS[0]}, whatever the run holds; the run's own "
    "mix: as often as in the run; or choose the share. Cases do not repeat until every case "
    "of the region has been shown.",
)
share = {"balanced": 0.5, "the run's own mix": None}.get(mix)
if mix == "choose the share":
    share = settings[1].slider(f"Share of {LABELS[1]} cases", 0.0, 1.0, 0.5, 0.05, key="quiz_share")
seed = int(settings[2].number_input("Seed", 0, 10**6, 0, key="quiz_seed"))
quiz: Quiz = st.session_state.setdefault("quiz", Quiz(seed=seed, positive_share=share))
now: dict = st.session_state.setdefault("quiz_now", {"case": None, "answer": None})
quiz.positive_share = share
if quiz.seed != seed:  # another seed: the quiz starts over, so that a seed replays its order
    quiz.seed = seed
    quiz.reset()
    now.update(case=None, answer=None)
labels = dict(zip(pool["image_path"], pool["label"].astype(int), strict=True))


def draw() -> None:
    now.update(case=quiz.next_case(labels), answer=None)


def answer(choice: int) -> None:
    if now["answer"] is None:
        now["answer"] = choice
        row = images[images["image_path"] == now["case"]].iloc[0]
        quiz.record(
            Attempt(
                now["case"],
                int(row["label"]),
                choice,
                float(row["probability"]),
                str(row["study_id"]),
            )
        )


def reset() -> None:
    quiz.reset()
    now.update(case=None, answer=None)


if now["case"] not in labels:
    draw()
case = pool[pool["image_path"] == now["case"]].iloc[0]
score = quiz.score()


def rate(value: float | None, count: int) -> str:
    return "none yet" if value is None else f"{value:.0%} of {count}"


board = st.columns([1, 1, 1, 1])
board[0].metric("Score", f"{score.right} / {score.asked}")
board[1].metric(
    f"{LABELS[1].capitalize()} found (sensitivity)", rate(score.sensitivity, score.positives)
)
board[2].metric(
    f"{LABELS[0].capitalize()} found (specificity)", rate(score.specificity, score.negatives)
)
board[3].button("Reset score", key="quiz_reset", on_click=reset, icon=":material/restart_alt:")
shown = sum(c in labels for c in quiz.seen)
st.caption(
    f"Case {shown} of {len(labels)} in this round (round {quiz.rounds + 1}, seed {quiz.seed}). "
    f"Keys: {KEYS[0]} = {LABELS[0]} · {KEYS[1]} = {LABELS[1]} · {NEXT_KEY} = next case."
)

left, right = st.columns([3, 2])
with left:
    show(case["image_path"], now["answer"] is not None, f"{case['region']} radiograph")
with right:
    if now["answer"] is None:
        st.markdown(f"**{LABELS[0].capitalize()} or {LABELS[1]}?**")
        for label, key in ((0, "quiz_normal"), (1, "quiz_abnormal")):
            st.button(
                LABELS[label].capitalize(),
                key=key,
                on_click=answer,
                args=(label,),
                width="stretch",
                shortcut=KEYS[label],
                help=f"Key {KEYS[label]}",
            )
    else:
        truth = int(case["label"])
        (st.success if now["answer"] == truth else st.error)(
            f"{'Correct' if now['answer'] == truth else 'Not quite'}: this case is "
            f"**{LABELS[truth]}**."
        )
        st.metric(f"Model probability ({LABELS[1]})", f"{case['probability']:.3f}")
        st.caption(
            f"Model verdict at threshold {state.threshold():.3f}: {verdict(case['probability'])}."
        )
        if model is not None:
            st.caption(f"The map shows where the evidence for '{LABELS[1]}' lies.")
        st.button(
            "Next case",
            key="quiz_next",
            on_click=draw,
            type="primary",
            width="stretch",
            shortcut=NEXT_KEY,
            help=f"Key {NEXT_KEY}",
        )
        open_button(case["study_id"], "quiz_open", st, "Open in the Study viewer")

missed = quiz.missed()
st.subheader(f"Review missed cases ({len(missed)})")
if not missed:
    st.caption("Every case answered wrongly this session comes here, with its map.")
elif note := inference.gallery_note(model):
    st.caption(note)
COLUMNS = 4
for start in range(0, len(missed), COLUMNS):
    for column, attempt in zip(st.columns(COLUMNS), missed[start : start + COLUMNS], strict=False):
        with column.container(border=True):
            show(attempt.case, True, "", st, inference.FAST_METHOD)
            st.caption(
                f"truth **{LABELS[attempt.truth]}** · answered {LABELS[attempt.answer]} · "
                f"model p = {attempt.probability:.3f} ({verdict(attempt.probability)})"
            )
            open_button(attempt.study_id, f"quiz_missed_{attempt.case}", st, "Study viewer")
