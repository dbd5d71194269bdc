"""A run's trust scores (nextray_core.run_trust, `nextray trust`): what is sampled, what is scored
against which boxes, the uniform baseline, the cache in the run and the CLI's refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from test_dashboard import synthetic_folders

from nextray_core.engine import load_engine
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.imaging import read_radiograph
from nextray_core.run_trust import (
    TRUST_FILE,
    TRUST_IMAGES_FILE,
    compute_run_trust,
    faithfulness_sample,
    read_run_trust,
    scored_by,
    write_run_trust,
)
from nextray_core.runs import read_run
from nextray_core.transforms import model_batch
from nextray_core.viewer import image_key, run_boxes


def table(regions: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """A predictions-like table with (negatives, positives) per region."""
    rows = []
    for region, (negatives, positives) in regions.items():
        for label, count in ((0, negatives), (1, positives)):
            rows += [{"region": region, "label": label, "image_path": f"{region}-{label}-{i}"}
                     for i in range(count)]  # fmt: skip
    return pd.DataFrame(rows)


def test_the_faithfulness_sample_balances_labels_caps_regions_and_repeats_with_its_seed():
    frame = table({"hand": (50, 50), "leg": (40, 3), "hip": (2, 1)})
    sample = faithfulness_sample(frame, per_region=10, seed=0)
    counts = sample.groupby(["region", "label"]).size()
    assert counts["hand", 0] == counts["hand", 1] == 5  # half of each label
    assert counts["leg", 1] == 3 and counts["leg", 0] == 7  # a short label's quota goes over
    assert counts["hip"].sum() == 3  # a small region gives all it has
    assert sample["image_path"].is_unique
    again = faithfulness_sample(frame, per_region=10, seed=0)
    assert again["image_path"].tolist() == sample["image_path"].tolist()
    other = faithfulness_sample(frame, per_region=10, seed=1)
    assert other["image_path"].tolist() != sample["image_path"].tolist()
    assert faithfulness_sample(frame, per_region=0).empty
    with pytest.raises(ConfigError):
        faithfulness_sample(frame, per_region=-1)


@pytest.fixture(scope="module")
def scored():
    """(engine, run) of the synthetic FracAtlas-mini run and the checkpoint that scored it."""
    checkpoint, run_path, _ = synthetic_folders()
    return load_engine(checkpoint, backend="torch-fp32"), read_run(run_path)


def test_localisation_uses_every_positive_boxed_image_and_the_uniform_baseline(scored):
    engine, run = scored
    positives = run.predictions[run.predictions["label"] == 1].reset_index(drop=True)
    pictures = [read_radiograph(p).to_uint8() for p in positives["image_path"]]
    maps = engine.explain(model_batch(pictures, engine.card.prep), "cam").maps
    first, second = [i for i, m in enumerate(maps) if m.max() > 0][:2]  # maps with evidence
    # a whole-image box and a left-half box: the scores these must give follow from the maps
    whole, half = (image_key(positives.iloc[i]) for i in (first, second))
    boxes = {whole: [(0.5, 0.5, 1.0, 1.0)], half: [(0.25, 0.5, 0.5, 1.0)]}
    trust = compute_run_trust(engine, run, boxes, method="cam", per_region=0)
    images = trust.images.set_index(trust.images["image_path"].map(lambda p: p.split("/")[-1]))
    assert set(images.index) == {whole, half}  # negatives and unboxed positives are not scored
    assert images.loc[whole, "uniform_energy"] == pytest.approx(1.0)
    assert images.loc[half, "uniform_energy"] == pytest.approx(0.5)
    assert images.loc[whole, "energy_inside"] == pytest.approx(1.0)
    assert bool(images.loc[whole, "pointing_hit"])
    left = maps[second][:, : maps[second].shape[1] // 2]
    assert images.loc[half, "energy_inside"] == pytest.approx(left.sum() / maps[second].sum(), 1e-4)
    peak_column = np.unravel_index(maps[second].argmax(), maps[second].shape)[1]
    assert bool(images.loc[half, "pointing_hit"]) == (peak_column < maps[second].shape[1] // 2)
    overall = trust.table("localisation").loc["all"]
    assert overall["uniform"] == pytest.approx(0.75) and overall["images"] == 2
    assert trust.table("faithfulness").empty and trust.summary["method"] == "cam"


def test_faithfulness_is_scored_on_the_sample_with_the_predicted_class(scored):
    engine, run = scored
    trust = compute_run_trust(engine, run, {}, method="gradcam", per_region=2, seed=3)
    images = trust.images
    assert len(images) == len(faithfulness_sample(run.predictions, 2, seed=3))
    assert images["faithfulness"].between(-1, 1).all()
    predicted = np.where(images["probability"] >= run.default_threshold, "abnormal", "normal")
    assert images["target"].tolist() == predicted.tolist()
    faith = trust.table("faithfulness")
    assert faith.loc["all", "images"] == len(images)
    assert set(faith.index) == {*run.predictions["region"], "all"}
    assert trust.table("localisation").empty  # no boxes given


def test_trust_is_cached_in_the_run_and_read_back(scored, tmp_path):
    engine, run = scored
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    run = read_run(copy)
    boxes, source = run_boxes(copy, run.meta)
    assert boxes, source  # the mini FracAtlas the run was evaluated on has boxes
    progress = []
    trust = compute_run_trust(
        engine, run, boxes, per_region=1, boxes_source=source,
        progress=lambda done, total, part: progress.append((done, total, part)),
    )  # fmt: skip
    assert progress[-1][0] == progress[-1][1] and {p[2] for p in progress} == {
        "localisation",
        "faithfulness",
    }
    write_run_trust(copy, trust)
    back = read_run_trust(copy)
    assert back.summary == json.loads((copy / TRUST_FILE).read_text())
    assert back.images["image_path"].tolist() == trust.images["image_path"].tolist()
    assert scored_by(back, run)
    assert read_run_trust(tmp_path) is None  # no trust.json: nothing cached
    (copy / TRUST_FILE).write_text('{"format": "something else"}')
    with pytest.raises(DatasetError, match="--overwrite"):
        read_run_trust(copy)


def test_the_trust_command_writes_once_and_refuses_to_overwrite(scored, tmp_path):
    _, run = scored
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    command = [sys.executable, "-m", "nextray_core.cli", "trust", str(copy),
               "--checkpoint", str(synthetic_folders()[0]), "--per-region", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "localisation:" in done.stdout and "faithfulness:" in done.stdout
    assert (copy / TRUST_FILE).is_file() and (copy / TRUST_IMAGES_FILE).is_file()
    before = (copy / TRUST_FILE).read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (copy / TRUST_FILE).read_text() == before  # nothing touched
    missing = subprocess.run(
        [sys.executable, "-m", "nextray_core.cli", "trust", str(tmp_path / "nowhere")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and "nextray evaluate" in missing.stderr


def test_unreadable_images_are_left_out_and_a_run_without_any_is_refused(scored, tmp_path):
    engine, run = scored
    predictions = run.predictions.copy()
    gone = predictions["image_path"].iloc[0]
    predictions.loc[predictions.index[0], "image_path"] = str(tmp_path / "moved.jpg")
    partly = compute_run_trust(engine, replace(run, predictions=predictions), {}, per_region=50)
    assert partly.summary["unreadable_images"] == [str(tmp_path / "moved.jpg")]
    assert gone not in set(partly.images["image_path"]) and len(partly.images) > 0
    nowhere = predictions.assign(
        image_path=[str(tmp_path / f"{i}.jpg") for i in range(len(predictions))]
    )
    with pytest.raises(DatasetError, match="could be read"):
        compute_run_trust(engine, replace(run, predictions=nowhere), {}, per_region=2)
