"""The demo's build script runs end to end, so that anyone can re-run (or retrain) the demo.

A tiny recipe on the bundled FracAtlas subset: 64 px, one epoch, random initial weights (the
Astra CT init needs the internet once). What is checked is the pipeline and what it ships,
not the model's accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nextray_core.checkpoint import MB, verify_checkpoint
from nextray_core.run_trust import read_run_trust
from nextray_core.runs import read_run

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "tests" / "data" / "fracatlas_mini"
TINY_RECIPE = {
    "recipe": "report", "kind": "fracatlas", "data_seed": 0, "arch": "resnet152", "size": 64,
    "batch_size": 8, "precision": "fp32", "lr": 1e-4, "loss": "class-weighted", "epochs": 1,
    "select": "auc", "seed": 0, "freeze_layers": 0,
}  # fmt: skip


@pytest.mark.slow
def test_build_demo_trains_packages_and_evaluates_from_a_fresh_start(tmp_path):
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    out = tmp_path / "demo"
    command = [sys.executable, str(REPO / "scripts" / "demo" / "build_demo.py"),
               "trust", "evaluate", "maps", "train", "package",  # run in pipeline order
               "--fracatlas", str(MINI), "--work", str(tmp_path / "work"), "--out", str(out),
               "--config", str(recipe), "--init", "none", "--no-guard"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    card = verify_checkpoint(out)
    assert card.class_names == ("not fractured", "fractured")
    assert card.training["hardware"].startswith("CPU (") and card.training["init"] == "none"
    assert card.training["size"] == 64 and card.prep.size == 64
    assert 0 <= card.default_threshold <= 1 and card.weights_dtype == "float16"
    assert card.extra["release"]["validation_predictions"] == "validation_predictions.csv"
    assert (out / "validation_predictions.csv").is_file()
    test = card.metrics["test (image level)"]["overall"]
    assert test["count"] == 2 and {"auc", "auc_low", "auc_high"} <= set(test)
    assert max(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 50 * MB

    run = read_run(out / "run")
    assert run.class_names == card.class_names and len(run.predictions) == 2
    assert all(Path(p).is_file() for p in run.predictions["image_path"])
    assert "CC BY 4.0" in (out / "run" / "images" / "README.md").read_text()
    for report in ("localisation.md", "localisation.json", "ood.json", "report.md", "boxes.csv"):
        assert (out / "run" / report).stat().st_size > 0, report
    trust = read_run_trust(out / "run")  # the Trust page's cache, from the core
    assert trust.summary["method"] == card.extra["map_method"]
    assert trust.table("faithfulness").loc["all", "images"] == 2  # both test images sampled
    assert "OOD flag rate on the test split" in card.metrics
    assert card.extra["map_method"] in {row["method"] for row in card.extra["maps"]["table"]}
    grid = 4 if card.extra["map_method"].endswith("layer3") else 2  # 64 px: layer3 / layer4
    assert f"{grid} x {grid} grid" in (out / "run" / "localisation.md").read_text()
    assert not (tmp_path / "work" / "train" / "last").is_relative_to(out)  # never shipped


def test_build_demo_refuses_a_missing_dataset_or_recipe(tmp_path):
    script = str(REPO / "scripts" / "demo" / "build_demo.py")
    missing = subprocess.run([sys.executable, script, "train", "--fracatlas", str(tmp_path)],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode != 0 and "pass --fracatlas PATH" in missing.stderr
    no_recipe = [sys.executable, script, "train", "--fracatlas", str(MINI),
                 "--config", str(tmp_path / "no.json"), "--work", str(tmp_path / "w")]  # fmt: skip
    refused = subprocess.run(no_recipe, capture_output=True, text=True)
    assert refused.returncode != 0 and "pass --config PATH" in refused.stderr
    assert not (tmp_path / "w").exists()  # nothing written before the checks
