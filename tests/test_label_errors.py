"""Likely label errors: the confident-learning rule, its ranking, the flip experiment, the CLI."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from nextray_core.cli import main
from nextray_core.errors import DatasetError
from nextray_core.label_errors import (
    class_thresholds,
    confident_labels,
    flip_experiment,
    flip_labels,
    marks_csv,
    precision_at_k,
    rank_label_errors,
    read_marks,
)


def separated_run(studies: int = 400, seed: int = 0) -> pd.DataFrame:
    """Image rows of two-view studies whose probabilities sit well apart by label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, studies)
    rows = []
    for i, label in enumerate(labels):
        centre = 0.8 if label else 0.2
        for view in range(2):
            rows.append(
                {
                    "image_path": f"s{i}/v{view}.png",
                    "study_id": f"s{i:04d}",
                    "patient_id": f"p{i}",
                    "region": ("hand", "leg")[i % 2],
                    "label": int(label),
                    "split": "test",
                    "probability": float(np.clip(rng.normal(centre, 0.12), 0, 1)),
                }
            )
    return pd.DataFrame(rows)


def test_thresholds_and_confident_classes_follow_the_rule():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])
    thresholds = class_thresholds(labels, probs)
    np.testing.assert_allclose(thresholds, [0.75, 0.75])
    # 0.9 >= .75 -> class 0; neither 0.6 nor 0.4 reach .75 -> none; 0.8 -> 1; 0.7 -> none
    assert confident_labels(probs, thresholds).tolist() == [0, -1, 1, -1]


def test_confident_disagreement_ranks_first_and_is_flagged():
    run = separated_run(50)
    wrong = run["study_id"] == "s0003"
    run.loc[wrong, "label"] = 1 - run.loc[wrong, "label"]
    ranked = rank_label_errors(run)
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["study_id"].iloc[0] == "s0003" and ranked["flagged"].iloc[0]
    flagged = ranked[ranked["flagged"]]
    assert (flagged["confident_label"] != flagged["label"]).all()
    # flagged first, then by self-confidence (the probability of the given label)
    assert ranked["flagged"].is_monotonic_decreasing
    assert flagged["self_confidence"].is_monotonic_increasing
    joint = np.array(ranked.attrs["confident_joint"])
    assert joint[0, 1] + joint[1, 0] == len(flagged)


def test_unlabelled_and_unreadable_studies_are_left_out():
    run = separated_run(20)
    run.loc[run["study_id"] == "s0001", "label"] = -1
    run.loc[run["study_id"] == "s0002", "probability"] = np.nan
    ranked = rank_label_errors(run)
    assert len(ranked) == 18 and not ranked["study_id"].isin(["s0001", "s0002"]).any()
    with pytest.raises(DatasetError, match="labelled"):
        rank_label_errors(run.assign(label=-1))


def test_flipping_keeps_every_view_of_a_study_together():
    run = separated_run(100)
    noisy, flipped = flip_labels(run, 0.1, seed=3)
    assert len(flipped) == 10
    changed = noisy["label"] != run["label"]
    assert set(noisy.loc[changed, "study_id"]) == flipped
    assert changed.sum() == 20  # both views of each flipped study


def test_flipped_labels_rank_far_above_chance_on_separated_probabilities():
    result = flip_experiment(separated_run(400), share=0.1, seed=1)
    assert result["chance"] == pytest.approx(0.1)
    assert result["precision_at_k"] >= 0.8  # chance is 0.1
    shuffled = separated_run(400).assign(
        probability=lambda f: np.random.default_rng(0).random(len(f))
    )
    assert flip_experiment(shuffled, share=0.1, seed=1)["precision_at_k"] < 0.4


def test_precision_at_k_counts_the_top_k():
    ranked = pd.DataFrame({"study_id": ["a", "b", "c", "d"]})
    assert precision_at_k(ranked, {"a", "c"}, 2) == 0.5
    assert precision_at_k(ranked, {"a", "c"}, 3) == pytest.approx(2 / 3)


def test_marks_round_trip_and_bad_files_are_named():
    marks = {"s2": "model wrong", "s1": "label looks wrong"}
    text = marks_csv(marks, {"s1": "cast hides the wrist"})
    assert read_marks(io.StringIO(text)) == (marks, {"s1": "cast hides the wrist"})
    with pytest.raises(DatasetError, match="unknown mark"):
        read_marks(io.StringIO("study_id,mark\ns1,maybe\n"))
    with pytest.raises(DatasetError, match="lacks the column"):
        read_marks(io.StringIO("id,verdict\ns1,unsure\n"))


def test_cli_ranks_writes_csv_and_simulates(tmp_path, capsys):
    from nextray_core import runs

    predictions = separated_run(60)
    run = runs.write_run(tmp_path / "run", predictions, {"format": runs.RUN_FORMAT})
    out = tmp_path / "ranked.csv"
    assert main(["label-errors", str(run), "--out", str(out), "--top", "3", "--simulate", "0.1",
                 "--seeds", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "precision at k=6" in printed and "chance 0.100" in printed
    written = pd.read_csv(out)
    assert written["study_id"].tolist() == rank_label_errors(predictions)["study_id"].tolist()
    assert sorted(p.name for p in run.iterdir()) == ["predictions.csv", "run.json"]
    assert main(["label-errors", str(run), "--simulate", "1.5"]) == 2
