"""The Teaching page's quiz through AppTest: on the shipped demo run (fractured / not fractured)
and on synthetic MURA-shaped runs (normal / abnormal) scored by the synthetic test checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_dashboard import app, no_exception, synthetic_folders, texts
from test_explore_dashboard import make_mura_run

from nextray_core import runs
from nextray_core.checkpoint import read_card

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
DEMO_RUN = DEMO_CHECKPOINT / "run"
needs_demo = pytest.mark.skipif(not runs.is_run(DEMO_RUN), reason="the demo run is not here")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["app.py"])


@pytest.fixture(scope="module")
def mura(tmp_path_factory):
    """(checkpoint, MURA-shaped run)."""
    checkpoint = synthetic_folders()[0]
    return checkpoint, make_mura_run(tmp_path_factory.mktemp("mura"), checkpoint)


@pytest.fixture(scope="module")
def rare(tmp_path_factory):
    """(checkpoint, a MURA-shaped run in which only about one image in ten is abnormal)."""
    checkpoint = synthetic_folders()[0]

    def rare_labels(rows):
        studies = rows["study_id"].drop_duplicates().sample(frac=1.0, random_state=0).tolist()
        abnormal, count = set(), 0
        for study in studies:  # whole studies abnormal until about 10% of the images are
            if count >= 0.1 * len(rows):
                break
            abnormal.add(study)
            count += int((rows["study_id"] == study).sum())
        return rows["study_id"].isin(abnormal).astype(int)

    root = tmp_path_factory.mktemp("rare")
    return checkpoint, make_mura_run(root, checkpoint, patients_valid=40, seed=5,
                                     relabel=rare_labels)  # fmt: skip


def answer(at, label: int):
    return at.button(key=("quiz_normal", "quiz_abnormal")[label]).click().run()


def metric(at, starts: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(starts))


def quiz_right_wrong_review_and_viewer(run: Path, checkpoint: Path) -> None:
    """Answer one case right and one wrong: the score, the learner's per-class rates and the
    review follow; the missed case opens in the Study viewer."""
    predictions = runs.read_run(run).predictions
    names = runs.read_run(run).class_names
    at = app("teaching", run, checkpoint, teach_mode="Quiz")
    no_exception(at)
    buttons = {at.button(key=k).label: at.button(key=k) for k in ("quiz_normal", "quiz_abnormal")}
    assert list(buttons) == [name.capitalize() for name in names]
    assert [b.proto.shortcut.lower() for b in buttons.values()] == ["1", "2"]
    assert not [s for s in (*at.success, *at.error) if "this case is" in s.value]  # hidden
    images_before = len(at.image)
    truths = []
    for right in (True, False):
        case = at.session_state["quiz_now"]["case"]
        truth = int(predictions.loc[predictions["image_path"] == case, "label"].iloc[0])
        truths.append(truth)
        answer(at, truth if right else 1 - truth)
        no_exception(at)
        shown = [s.value for s in (*at.success, *at.error)]
        assert any(f"this case is **{names[truth]}**" in s for s in shown), shown
        assert any("Model verdict at threshold" in c.value for c in at.caption)
        assert at.button(key="quiz_next").proto.shortcut.lower() == "enter"
        if right:
            assert metric(at, "Score") == "1 / 1"
            assert len(at.image) == images_before  # the same tile, now with its map
            at.button(key="quiz_next").click().run()
    assert metric(at, "Score") == "1 / 2"
    positives = [t for t in truths if t == 1]
    sensitivity = metric(at, f"{names[1].capitalize()} found")
    specificity = metric(at, f"{names[0].capitalize()} found")
    if truths == [1, 1]:
        assert sensitivity == "50% of 2" and specificity == "none yet"
    elif truths == [0, 0]:
        assert specificity == "50% of 2" and sensitivity == "none yet"
    else:  # one of each: the right one scores 100%, the wrong one 0%
        assert {sensitivity, specificity} == {"100% of 1", "0% of 1"}
    assert len(positives) <= 2
    assert "Review missed cases (1)" in [h.value for h in at.subheader]
    missed = at.session_state["quiz_now"]["case"]
    study = predictions.loc[predictions["image_path"] == missed, "study_id"].iloc[0]
    assert f"truth **{names[truths[1]]}** · answered {names[1 - truths[1]]}" in texts(at)
    at.button(key=f"quiz_missed_{missed}").click().run()
    no_exception(at)
    assert at.selectbox(key="study_pick").value == study
    # a reset empties the score and the review
    at.switch_page("views/teaching.py").run()
    at.button(key="quiz_reset").click().run()
    assert metric(at, "Score") == "0 / 0"
    assert "Review missed cases (0)" in [h.value for h in at.subheader]


@needs_demo
def test_the_quiz_on_the_demo_run_scores_reviews_and_opens_the_viewer():
    quiz_right_wrong_review_and_viewer(DEMO_RUN, DEMO_CHECKPOINT)


def test_the_quiz_on_a_mura_shaped_run_scores_reviews_and_opens_the_viewer(mura):
    quiz_right_wrong_review_and_viewer(mura[1], mura[0])


def test_a_balanced_quiz_shows_about_half_abnormal_cases_from_a_rare_pool(rare):
    checkpoint, run = rare
    predictions = runs.read_run(run).predictions
    assert predictions["label"].mean() < 0.15
    at = app("teaching", run, checkpoint, teach_mode="Quiz")
    assert at.radio(key="quiz_mix").value == "balanced"
    shown = []
    for _ in range(16):
        case = at.session_state["quiz_now"]["case"]
        shown.append(case)
        answer(at, 0)
        at.button(key="quiz_next").click().run()
    no_exception(at)
    assert len(set(shown)) == len(shown)  # no repeats
    truths = predictions.set_index("image_path").loc[shown, "label"]
    assert 4 <= truths.sum() <= 12, truths.sum()  # the run's own mix would give about 2
    assert metric(at, "Score") == f"{int((truths == 0).sum())} / 16"
    assert metric(at, "Abnormal found") == f"0% of {int(truths.sum())}"
    assert f"Review missed cases ({int(truths.sum())})" in [h.value for h in at.subheader]


def test_cases_do_not_repeat_until_the_region_is_used_up(mura):
    checkpoint, run = mura
    predictions = runs.read_run(run).predictions
    counts = predictions["region"].value_counts()
    region = counts.index[-1]  # the smallest region
    pool = set(predictions.loc[predictions["region"] == region, "image_path"])
    at = app("teaching", run, checkpoint, teach_mode="Quiz", teach_region=region)
    shown = []
    for _ in range(len(pool) + 1):
        shown.append(at.session_state["quiz_now"]["case"])
        answer(at, 1)
        at.button(key="quiz_next").click().run()
    no_exception(at)
    assert set(shown[:-1]) == pool and len(shown[:-1]) == len(pool)
    assert shown[-1] in pool and "round 2" in texts(at)


def test_side_by_side_opens_a_case_in_the_viewer_and_says_which_maps(mura):
    checkpoint, run = mura
    predictions = runs.read_run(run).predictions
    at = app("teaching", run, checkpoint, teach_maps=True)
    no_exception(at)
    opens = [b for b in at.button if b.key and b.key.startswith("teach_open_")]
    assert len(opens) == len(at.image) > 0  # one per case shown
    path = opens[0].key.removeprefix("teach_open_")
    opens[0].click().run()
    no_exception(at)
    study = predictions.loc[predictions["image_path"] == path, "study_id"].iloc[0]
    assert at.selectbox(key="study_pick").value == study


@needs_demo
def test_side_by_side_on_the_demo_uses_the_fast_maps_and_says_so():
    at = app("teaching", DEMO_RUN, DEMO_CHECKPOINT, teach_maps=True, teach_count=1)
    no_exception(at)
    method = read_card(DEMO_CHECKPOINT).extra["map_method"]
    assert f"maps: cam (fast) — open a study for {method}" in texts(at)
