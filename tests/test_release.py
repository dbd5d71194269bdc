"""The release step: every trained checkpoint comes out complete and self-describing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FRACATLAS_MINI

from nextray_core import curves
from nextray_core.checkpoint import load_checkpoint, verify_checkpoint
from nextray_core.cli import main
from nextray_core.datasets import dataset_task, make_synthetic_mura
from nextray_core.engine.engine import CALIBRATION_IMAGES
from nextray_core.ood import load_ood
from nextray_core.recalibration import (
    AffineCalibration,
    fit_calibration,
    fold_into_head,
    raw_head,
    restore_raw_head,
    sigmoid,
)
from nextray_core.release import VALIDATION_FILE

# only layer4's last block and the head train on a random (but frozen, so "initialised")
# backbone: the cheapest ResNet-152 run that still exercises the whole pipeline
TINY_FLAGS = ["--size", "32", "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
              "--workers", "0", "--freeze-layers", "456", "--no-progress"]  # fmt: skip


def _train(data, out, random_init, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--init", str(random_init),
                 *TINY_FLAGS, *extra])  # fmt: skip


# ---------------------------------------------------------------- calibration
def test_platt_and_temperature_recover_a_known_miscalibration():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    labels = rng.random(20000) < sigmoid(0.5 * logits - 1.0)  # over-confident and shifted
    raw = sigmoid(logits)
    platt = fit_calibration(raw, labels, "platt")
    assert platt.scale == pytest.approx(0.5, abs=0.05)
    assert platt.shift == pytest.approx(-1.0, abs=0.1)
    before = curves.expected_calibration_error(labels, raw)
    assert curves.expected_calibration_error(labels, platt.apply(raw)) < 0.02 < before
    temperature = fit_calibration(raw, labels, "temperature")
    assert temperature.shift == 0.0 and temperature.to_dict()["temperature"] > 1.0
    assert fit_calibration(raw, labels, "none") == AffineCalibration("none")


def test_calibration_folds_into_the_head_and_the_raw_head_comes_back(resnet152):
    model = resnet152
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[:, 0]
    saved = raw_head(model)
    fold_into_head(model, AffineCalibration("platt", 0.5, -1.0))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, 0], 0.5 * before - 1.0, rtol=1e-4, atol=1e-4)
    assert restore_raw_head(model, saved)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, 0], before)


def test_tasks_and_class_names_come_from_the_data(tmp_path):
    assert dataset_task("fracatlas", FRACATLAS_MINI).positive_class == "fractured"
    assert dataset_task("mura", tmp_path).negative_class == "normal"
    for name in ("negative", "positive"):
        (tmp_path / "folder" / name).mkdir(parents=True)
    task = dataset_task("folder", tmp_path / "folder")
    assert (task.negative_class, task.positive_class) == ("negative", "positive")


# ---------------------------------------------------------------- nextray train -> release
@pytest.mark.slow
def test_train_on_fracatlas_releases_a_complete_checkpoint(tmp_path, random_init, capsys):
    out = tmp_path / "run"
    assert _train(FRACATLAS_MINI, out, random_init) == 0
    card = verify_checkpoint(out / "best")
    assert card.class_names == ("not fractured", "fractured")
    assert "FracAtlas" in card.task and "MURA" not in card.task

    # the threshold is re-derived from the validation predictions kept beside the weights
    val = pd.read_csv(out / "best" / VALIDATION_FILE)
    assert set(val["split"]) == {"val"} and len(val) == card.metrics["validation"]["image"][
        "overall"]["count"]  # fmt: skip
    youden = curves.youden_threshold(val["label"].to_numpy(), val["probability"].to_numpy())
    assert card.default_threshold == pytest.approx(youden)
    release = card.extra["release"]
    assert release["policy"]["threshold"] == "youden" and "validation" in release["threshold"]
    overall = card.metrics["validation"]["image"]["overall"]
    assert {"auc", "auc_low", "auc_high", "sensitivity", "specificity"} <= set(overall)

    capsys.readouterr()
    assert main(["card", str(out / "best")]) == 0
    printed = capsys.readouterr().out
    assert "validation (study):" in printed and "AUC (95% CI)" in printed

    _, _, extras = load_checkpoint(out / "best")
    ood = load_ood(extras, card)  # the statistics the engine will flag with
    assert ood is not None and ood.threshold > 0 and card.extra["ood"]["depths"]
    assert len(extras[CALIBRATION_IMAGES]) == len(val)  # fewer than 128 images: all of them

    # releasing again starts from the raw head: the same threshold, not a double calibration
    again = tmp_path / "again"
    assert main(["release", str(out / "best"), "--data", str(FRACATLAS_MINI), "--out",
                 str(again), "--device", "cpu"]) == 0  # fmt: skip
    card_again = verify_checkpoint(again)
    assert card_again.default_threshold == pytest.approx(card.default_threshold)
    assert card_again.extra["release"]["released_again"] is True


@pytest.mark.slow
def test_train_on_a_mura_tree_names_mura_classes(tmp_path, random_init):
    root = make_synthetic_mura(tmp_path / "mura", patients_train=10, patients_valid=8, seed=1)
    assert _train(root, tmp_path / "run", random_init) == 0
    card = verify_checkpoint(tmp_path / "run" / "best")
    assert card.class_names == ("normal", "abnormal") and "MURA" in card.task
    assert 0.0 <= card.default_threshold <= 1.0
    assert card.metrics["validation"]["study"]["overall"]["count"] > 0


def test_frozen_layers_of_a_random_network_are_refused(tmp_path, capsys):
    code = main(["train", "--data", str(FRACATLAS_MINI), "--out", str(tmp_path / "x"),
                 "--init", "none"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "--init none --freeze-layers 0" in error and "random" in error
    assert not (tmp_path / "x").exists()


def test_release_refuses_data_without_a_validation_split(tmp_path):
    index = pd.DataFrame({"image_path": ["a.png"], "study_id": ["s"], "patient_id": ["p"],
                          "region": ["hand"], "label": [1], "split": ["train"]})  # fmt: skip
    from nextray_core.errors import ConfigError
    from nextray_core.release import release

    with pytest.raises(ConfigError, match="validation split"):
        release(tmp_path, index, dataset_task("fracatlas", tmp_path))


def test_a_densenet_is_released_with_ood_on_its_pooled_features(tmp_path):
    """DenseNet-169 (the MURA paper's architecture) has no ResNet stages: its OOD statistics
    use the pooled features the head sees, and the engine scores new images with them."""
    from nextray_core.checkpoint import ModelCard, save_checkpoint
    from nextray_core.datasets import load_dataset
    from nextray_core.engine import answer_radiograph, load_engine
    from nextray_core.model import build_model
    from nextray_core.release import release
    from nextray_core.transforms import Preprocessing

    model = build_model("densenet169", init="none").eval()
    card = ModelCard(name="densenet", architecture="densenet169",
                     preprocessing=Preprocessing(size=64).to_dict())  # fmt: skip
    save_checkpoint(model, tmp_path / "densenet", card, dtype=torch.float16)
    index = load_dataset("fracatlas", FRACATLAS_MINI)
    released = release(tmp_path / "densenet", index, dataset_task("fracatlas", FRACATLAS_MINI))
    assert list(released.extra["ood"]["depths"]) == ["layer4"]
    engine = load_engine(tmp_path / "densenet", backend="torch-fp32")
    answer = answer_radiograph(engine, index["image_path"].iloc[0])
    assert np.isfinite(answer.ood_distance) and answer.ood_flag in (True, False)
