"""``nextray evaluate`` end to end on a synthetic MURA tree, run folders, and user mistakes."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from nextray_core.checkpoint import ModelCard, save_checkpoint
from nextray_core.cli import main
from nextray_core.datasets import load_fracture_boxes, make_synthetic_mura
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.model import output_linear
from nextray_core.run_map import FEATURES_FILE, fit_projection, read_features
from nextray_core.runs import (
    CURVES_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RUN_FILE,
    SCORER_FILE,
    read_run,
    write_run,
)
from nextray_core.transforms import Preprocessing
from nextray_core.viewer import RUN_BOXES_FILE, run_boxes

FRACATLAS_MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"
RUN_FILES = {PREDICTIONS_FILE, RUN_FILE, METRICS_FILE, CURVES_FILE, REPORT_FILE, SCORER_FILE}
RUN_FILES |= {FEATURES_FILE}


def save_tiny(base: nn.Module, directory: Path, *, seed: int, threshold: float) -> Path:
    """A random ResNet-152 checkpoint (64 px input) whose probabilities stay near 0.5."""
    model = copy.deepcopy(base)
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
    head = output_linear(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.1)
        head.bias.zero_()
    card = ModelCard(
        name=f"tiny-{seed}",
        preprocessing=Preprocessing(size=64).to_dict(),
        default_threshold=threshold,
        training={"data_seed": 0},
    )
    return save_checkpoint(model, directory, card)


@pytest.fixture(scope="module")
def world(tmp_path_factory, resnet152) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    return {
        "root": root,
        "data": make_synthetic_mura(root / "mura", patients_train=2, patients_valid=12),
        "a": save_tiny(resnet152, root / "ckpt_a", seed=1, threshold=0.5),
        "b": save_tiny(resnet152, root / "ckpt_b", seed=2, threshold=0.4),
    }


def evaluate(world, out: Path, *extra: str, checkpoints=("a", "b")) -> int:
    argv = ["evaluate", "--checkpoint", *(str(world[c]) for c in checkpoints)]
    argv += ["--data", str(world["data"]), "--out", str(out), "--bootstrap", "200", *extra]
    return main(argv)


@pytest.fixture(scope="module")
def ensemble_run(world) -> Path:
    out = world["root"] / "runs" / "ensemble"
    assert evaluate(world, out) == 0
    return out


def test_ensemble_evaluation_writes_a_complete_run(world, ensemble_run):
    run = read_run(ensemble_run)
    assert set(run.files) == RUN_FILES
    assert not [p for p in ensemble_run.parent.iterdir() if p.name.startswith(".")]  # no staging
    predictions = run.predictions
    assert len(predictions) > 0 and set(predictions["split"]) == {"test"}
    np.testing.assert_allclose(
        predictions["probability"], predictions[["prob_0", "prob_1"]].mean(axis=1), rtol=1e-9
    )
    meta = run.meta
    cards = [json.loads((world[c] / "card.json").read_text()) for c in ("a", "b")]
    assert [m["weights_sha256"] for m in meta["checkpoints"]] == [
        c["weights_sha256"] for c in cards
    ]
    assert meta["default_threshold"] == pytest.approx(0.45)  # mean of the cards' 0.5 and 0.4
    assert meta["dataset"]["kind"] == "mura" and meta["dataset"]["split"] == "test"
    assert meta["preprocessing"]["size"] == 64 and meta["ensemble"]["combine"] == "mean"
    assert meta["counts"]["images"] == len(predictions)
    assert meta["counts"]["studies"] == predictions["study_id"].nunique()
    assert "verdict" not in predictions.columns  # no threshold baked in

    metrics = run.metrics
    assert metrics["threshold"] == pytest.approx(0.45) and metrics["bootstrap"]["n"] == 200
    for level in ("image", "study"):
        overall = metrics[level]["overall"]
        assert overall["tn"] + overall["fp"] + overall["fn"] + overall["tp"] == overall["count"]
        assert overall["accuracy_low"] <= overall["accuracy"] <= overall["accuracy_high"]
    assert metrics["study"]["overall"]["count"] == meta["counts"]["studies"]

    report = (ensemble_run / REPORT_FILE).read_text()
    assert "Table 2" in report and "Table 3" in report and "Radiologist 1" in report
    assert "20x too narrow" in report and "tiny-1" in report

    scorer = (ensemble_run / SCORER_FILE).read_text().splitlines()
    assert len(scorer) == meta["counts"]["studies"]
    pattern = re.compile(
        r"^MURA-v1\.1/valid/XR_[A-Z]+/patient\d{5}/study\d+_(positive|negative)/,[01]$"
    )
    assert all(pattern.match(line) for line in scorer), scorer[:2]
    studies = predictions.groupby("study_id", sort=False)["probability"].mean()
    expected = [f"MURA-v1.1/{s}/,{int(p >= 0.45)}" for s, p in studies.items()]
    assert scorer == expected

    curves = json.loads((ensemble_run / CURVES_FILE).read_text())
    assert set(curves) == {"image", "study"} and "presets" in curves["study"]["overall"]


def test_single_checkpoint_is_member_zero_and_options_apply(world, ensemble_run, capsys):
    out = world["root"] / "runs" / "single"
    code = evaluate(world, out, "--regions", "hand,ELBOW", "--threshold", "0.3", checkpoints=["a"])
    printed = capsys.readouterr().out
    assert code == 0 and "Study level" in printed and str(out) in printed
    single = read_run(out)
    assert set(single.predictions["region"]) <= {"hand", "elbow"}
    assert (
        single.metrics["threshold"] == 0.3 and single.metrics["threshold_source"] == "--threshold"
    )
    assert single.meta["dataset"]["regions"] == ["elbow", "hand"]
    ensemble = read_run(ensemble_run).predictions.set_index("image_path")
    merged = single.predictions.set_index("image_path")["probability"]
    np.testing.assert_allclose(merged, ensemble.loc[merged.index, "prob_0"], rtol=1e-5)

    # The run exists now: refused without --overwrite, replaced with it.
    assert evaluate(world, out, "--threshold", "0.6", checkpoints=["a"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert read_run(out).metrics["threshold"] == 0.3
    assert evaluate(world, out, "--threshold", "0.6", "--overwrite", checkpoints=["a"]) == 0
    assert read_run(out).metrics["threshold"] == 0.6
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"checkpoint": "missing"}, "no checkpoint"),
        ({"data": "nowhere"}, "does not exist"),
        ({"split": "holdout"}, "unknown split 'holdout'.*test"),
        ({"regions": "wrist,skull"}, "unknown region.*skull.*wrist"),
        ({"threshold": "1.5"}, "--threshold"),
        ({"out": "not_a_run"}, "not an evaluation run"),
    ],
)
def test_user_mistakes_exit_2_and_write_nothing(world, tmp_path, capsys, change, message):
    stranger = tmp_path / "not_a_run"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    checkpoint = tmp_path / "missing" if "checkpoint" in change else world["a"]
    data = tmp_path / "nowhere" if "data" in change else world["data"]
    out = stranger if "out" in change else tmp_path / "run"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]
    argv += ["--split", change.get("split", "test"), "--bootstrap", "10"]
    argv += ["--regions", change["regions"]] if "regions" in change else []
    argv += ["--threshold", change["threshold"]] if "threshold" in change else []
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_run"]  # nothing half-written
    assert [p.name for p in stranger.iterdir()] == ["thesis.tex"]


def test_read_run_refuses_folders_that_are_not_runs(tmp_path, ensemble_run):
    with pytest.raises(DatasetError, match="not a folder"):
        read_run(tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"no run\.json"):
        read_run(tmp_path)
    (tmp_path / RUN_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not a neXt-Ray run"):
        read_run(tmp_path)


def test_write_run_is_atomic(tmp_path):
    rows = pd.DataFrame(
        {"image_path": ["/a.png"], "study_id": ["s"], "patient_id": ["p"], "region": ["hand"],
         "label": [1], "split": ["test"], "probability": [0.7]}
    )  # fmt: skip
    meta = {"format": "nextray-run/1", "default_threshold": 0.5}
    with pytest.raises(TypeError):
        write_run(tmp_path / "run", rows, meta, files={"report.md": 42})  # fails half-way
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "empty", rows, meta)  # an empty folder is fine
    assert read_run(tmp_path / "empty").predictions["probability"].tolist() == [0.7]
    with pytest.raises(ConfigError, match="already holds a run"):
        write_run(tmp_path / "empty", rows, meta)


def test_non_mura_dataset_omits_the_mura_comparison(world, tmp_path):
    if not FRACATLAS_MINI.is_dir():
        pytest.skip("tests/data/fracatlas_mini is not present")
    out = tmp_path / "fracatlas"
    argv = ["evaluate", "--checkpoint", str(world["a"]), "--data", str(FRACATLAS_MINI)]
    assert main([*argv, "--out", str(out), "--split", "test", "--bootstrap", "50"]) == 0
    run = read_run(out)
    assert run.meta["dataset"]["kind"] == "fracatlas" and SCORER_FILE not in run.files
    report = (out / REPORT_FILE).read_text()
    assert "Table 2" in report and "Radiologist 1" not in report and "not MURA" in report


def test_copy_images_makes_a_run_that_opens_from_anywhere(world, tmp_path):
    out = tmp_path / "travelling"
    argv = ["evaluate", "--checkpoint", str(world["a"]), "--data", str(FRACATLAS_MINI)]
    argv += ["--out", str(out), "--split", "test", "--bootstrap", "20", "--copy-images"]
    assert main([*argv, "--backend", "torch-fp32"]) == 0
    stored = pd.read_csv(out / PREDICTIONS_FILE)["image_path"]
    assert all(not Path(p).is_absolute() and p.startswith("images/") for p in stored)
    moved = tmp_path / "elsewhere" / "run"
    out.rename(moved.parent.mkdir() or moved)
    run = read_run(moved)
    paths = [Path(p) for p in run.predictions["image_path"]]
    assert paths and all(p.is_file() and p.is_relative_to(moved) for p in paths)
    assert run.meta["backends"] == ["torch-fp32"]
    # the copied images keep their ground truth: the boxes of exactly those images travel too
    boxes, source = run_boxes(moved, {"dataset": {"kind": "fracatlas", "root": "/nowhere"}})
    assert source == str(moved / RUN_BOXES_FILE)
    expected = load_fracture_boxes(FRACATLAS_MINI)
    names = {p.name for p in paths}
    assert boxes and set(boxes) == set(expected["image_id"]) & names


def test_copy_images_is_refused_for_mura(world, tmp_path, capsys):
    out = tmp_path / "mura-run"
    argv = ["evaluate", "--checkpoint", str(world["a"]), "--data", str(world["data"])]
    assert main([*argv, "--out", str(out), "--copy-images"]) == 2
    assert "licence" in capsys.readouterr().err and not out.exists()


def test_a_run_names_its_classes_and_older_runs_read_as_mura(tmp_path, ensemble_run):
    assert read_run(ensemble_run).class_names == ("normal", "abnormal")
    older = tmp_path / "older"
    shutil.copytree(ensemble_run, older)
    meta = json.loads((older / RUN_FILE).read_text())
    assert meta.pop("classes") == {"negative": "normal", "positive": "abnormal"}
    (older / RUN_FILE).write_text(json.dumps(meta))
    assert read_run(older).class_names == ("normal", "abnormal")


def test_a_small_evaluation_answers_in_fp32_like_predict(resnet152, tmp_path, monkeypatch, capsys):
    # a checkpoint WITH calibration images: auto would otherwise build and check a fast path
    from nextray_core.datasets import load_dataset
    from nextray_core.engine import calibration_tensors
    from nextray_core.engine.engine import SMALL_JOB

    folder = tmp_path / "calibrated"
    card = ModelCard(name="calibrated", preprocessing=Preprocessing(size=64).to_dict())
    calibration = calibration_tensors(load_dataset("fracatlas", FRACATLAS_MINI), size=64, count=8)
    save_checkpoint(resnet152, folder, card, extra_tensors=calibration)

    def must_not_build(*args, **kwargs):
        raise AssertionError("a small evaluation built a fast path")

    monkeypatch.setattr("nextray_core.engine.engine.export_onnx", must_not_build)
    monkeypatch.setattr("nextray_core.engine.engine.TorchBf16", must_not_build)
    out = tmp_path / "run"
    argv = ["evaluate", "--checkpoint", str(folder), "--data", str(FRACATLAS_MINI)]
    assert main([*argv, "--out", str(out), "--bootstrap", "0", "--backend", "auto"]) == 0
    meta = json.loads((out / RUN_FILE).read_text())
    images = meta["counts"]["images"]
    assert images < SMALL_JOB and meta["backends"] == ["torch-fp32"]
    assert f"auto, {images} image(s): fp32 is ready at once" in capsys.readouterr().err


def test_evaluate_stores_the_pca_of_the_images_pooled_features(world, tmp_path):
    from nextray_core.checkpoint import load_checkpoint
    from nextray_core.explain import predict_with_cam
    from nextray_core.imaging import read_radiograph
    from nextray_core.transforms import as_image_tensor, eval_transform

    out = tmp_path / "with-features"
    assert evaluate(world, out, "--backend", "torch-fp32", checkpoints=["a"]) == 0
    run = read_run(out)
    stored = read_features(out, len(run.predictions))
    assert stored.projection.dtype == np.float16 and stored.ood_distance is None
    model, card, _ = load_checkpoint(world["a"])
    transform = eval_transform(card.prep)
    batch = torch.stack(
        [
            transform(as_image_tensor(torch.from_numpy(read_radiograph(p).to_uint8())))
            for p in run.predictions["image_path"]
        ]
    )
    with torch.no_grad():
        pooled = predict_with_cam(model.eval(), batch).pooled_features.numpy()
    expected = fit_projection(pooled, dims=stored.projection.shape[1]).projection
    scale = np.abs(expected.astype(float)).max()
    assert np.abs(stored.projection.astype(float) - expected).max() < 0.02 * scale
    skipped = tmp_path / "without"
    assert evaluate(world, skipped, "--no-features", checkpoints=["a"]) == 0
    assert FEATURES_FILE not in read_run(skipped).files
