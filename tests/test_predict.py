"""Prediction: ensembles, mixed input sizes, loose files and folders, unreadable files."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.resnet import Bottleneck

from nextray_core.checkpoint import ModelCard, read_card, save_checkpoint, write_card
from nextray_core.cli import main
from nextray_core.errors import ConfigError, DatasetError
from nextray_core.model import output_linear
from nextray_core.predict import (
    combine_probabilities,
    ensemble_threshold,
    files_index,
    predict_files,
    predict_index,
    study_table,
)
from nextray_core.transforms import Preprocessing

FRACATLAS_MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"


def tiny_member(base: nn.Module, *, seed: int, size: int = 64, threshold: float = 0.5):
    """A random ResNet-152 with its card whose probabilities stay near 0.5 rather than saturate
    (zero-init residual branches keep the features small); small inputs keep CPU tests fast."""
    model = copy.deepcopy(base)
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
    head = output_linear(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator)
        head.weight.copy_(weight * 0.1)
        head.bias.zero_()
    card = ModelCard(
        name=f"tiny-{seed}",
        preprocessing=Preprocessing(size=size).to_dict(),
        default_threshold=threshold,
    )
    return model.eval(), card


@pytest.fixture(scope="module")
def members(resnet152):
    return [
        tiny_member(resnet152, seed=1, threshold=0.5),
        tiny_member(resnet152, seed=2, threshold=0.45),
        tiny_member(resnet152, seed=3, size=32, threshold=0.55),
    ]


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> pd.DataFrame:
    """Six grayscale PNGs in three MURA-named study folders."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = []
    for study, views in (("study1_positive", 2), ("study2_negative", 3), ("study3_positive", 1)):
        folder = root / "XR_WRIST" / "patient00001" / study
        folder.mkdir(parents=True)
        for v in range(views):
            path = folder / f"image{v + 1}.png"
            Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(path)
            paths.append(path)
    return files_index(paths)


def test_files_index_reads_mura_folder_names(sample_index):
    assert sample_index["region"].unique().tolist() == ["wrist"]
    assert sample_index["label"].tolist() == [1, 1, 0, 0, 0, 1]
    assert sample_index["study_id"].nunique() == 3
    assert (
        sample_index["study_id"] == sample_index["image_path"].map(lambda p: str(Path(p).parent))
    ).all()


def test_ensemble_mean_is_the_mean_of_members_with_mixed_input_sizes(members, sample_index):
    frames = [predict_index([m], sample_index) for m in members]
    assert "prob_0" not in frames[0].columns
    singles = [frame["probability"].to_numpy() for frame in frames]
    assert all(np.all((p > 0.01) & (p < 0.99)) for p in singles)  # not saturated
    assert not np.allclose(singles[0], singles[1])
    both = predict_index(members, sample_index, batch_size=4)
    assert both[["image_path", "study_id", "label"]].equals(
        sample_index[["image_path", "study_id", "label"]]
    )
    for i, single in enumerate(singles):
        np.testing.assert_allclose(both[f"prob_{i}"], single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both["probability"], np.mean(singles, axis=0), rtol=1e-5)


def test_vote_is_the_share_of_members_above_their_own_threshold(members, sample_index):
    voted = predict_index(members, sample_index, combine="vote")
    member_probs = voted[["prob_0", "prob_1", "prob_2"]].to_numpy()
    expected = (member_probs >= np.array([0.5, 0.45, 0.55])).mean(axis=1)
    np.testing.assert_allclose(voted["probability"], expected)
    assert set(np.round(voted["probability"] * 3)) <= {0, 1, 2, 3}


def test_combination_rules_and_default_thresholds():
    probs = np.array([[0.2, 0.6, 0.9], [0.5, 0.4, 0.1]])
    np.testing.assert_allclose(combine_probabilities(probs, [0.5] * 3, "mean"), [17 / 30, 1 / 3])
    np.testing.assert_allclose(
        combine_probabilities(probs, [0.5, 0.4, 0.5], "vote"), [2 / 3, 2 / 3]
    )
    cards = [ModelCard(name="a", default_threshold=0.4), ModelCard(name="b", default_threshold=0.6)]
    assert ensemble_threshold(cards, "mean") == pytest.approx(0.5)
    assert ensemble_threshold(cards, "vote") == 1.0  # strict majority of two: both
    assert ensemble_threshold(cards * 2 + cards[:1], "vote") == 0.6  # 3 of 5
    with pytest.raises(ConfigError, match="mean"):
        ensemble_threshold(cards, "median")


def test_study_table_averages_views_and_skips_unreadable_ones():
    rows = pd.DataFrame(
        {"study_id": ["a", "a", "b", "b", "b"], "patient_id": "p", "region": "hand",
         "label": [1, 1, 0, 0, 0], "probability": [0.2, 0.6, 0.3, np.nan, 0.5],
         "prob_0": [0.1, 0.3, 0.3, np.nan, 0.1]}
    )  # fmt: skip
    studies = study_table(rows)
    assert studies["probability"].tolist() == pytest.approx([0.4, 0.4])
    assert studies["prob_0"].tolist() == pytest.approx([0.2, 0.2])
    assert studies["n_views"].tolist() == [2, 2]


def test_unreadable_image_stops_an_evaluation_but_is_reported_by_predict(
    members, tmp_path, sample_index
):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    index = pd.concat([sample_index, files_index([bad])], ignore_index=True)
    with pytest.raises(DatasetError, match=r"broken\.png"):
        predict_index(members[:1], index)
    reported = predict_index(members[:1], index, on_error="report")
    assert reported["error"].iloc[-1] and np.isnan(reported["probability"].iloc[-1])
    assert (reported["error"].iloc[:-1] == "").all() and reported["probability"].iloc[
        :-1
    ].notna().all()


@pytest.fixture(scope="module")
def checkpoint(members, tmp_path_factory) -> Path:
    return save_checkpoint(members[0][0], tmp_path_factory.mktemp("ckpt") / "tiny", members[0][1])


@pytest.fixture
def image_folders(tmp_path) -> list[Path]:
    source = FRACATLAS_MINI / "images"
    if not source.is_dir():
        pytest.skip("tests/data/fracatlas_mini is not present")
    extra = tmp_path / "uploads"
    extra.mkdir()
    shutil.copy(next((source / "Fractured").glob("*.jpg")), extra / "good.jpg")
    (extra / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (extra / "notes.txt").write_text("not an image: ignored when walking a folder")
    return [source, extra]


def test_predict_files_on_real_images_reports_the_corrupt_one(members, image_folders):
    rows = predict_files(members[:1], image_folders)
    n_real = len(list(image_folders[0].rglob("*.jpg")))
    assert len(rows) == n_real + 2  # the .txt file is not an image
    corrupt = rows["image_path"].str.endswith("corrupt.jpg")
    assert rows.loc[corrupt, "error"].iloc[0] and rows.loc[corrupt, "probability"].isna().all()
    assert (rows.loc[~corrupt, "error"] == "").all()
    assert rows.loc[~corrupt, "probability"].between(0, 1).all()
    studies = study_table(rows)
    assert len(studies) == 3  # Fractured/, Non_fractured/, uploads/
    assert studies.set_index("study_id").loc[str(image_folders[1]), "n_views"] == 1


def test_predict_command_prints_tables_and_writes_csv(checkpoint, image_folders, tmp_path, capsys):
    code = main(["predict", *map(str, image_folders), "--checkpoint", str(checkpoint)])
    out, err = capsys.readouterr()
    assert code == 1  # one file could not be read
    assert "corrupt.jpg" in out and "unreadable" in out and "could not be read" in err
    assert "good.jpg" in out and "Studies" in out and "threshold 0.5" in out
    target = tmp_path / "out" / "predictions.csv"
    code = main(["predict", str(image_folders[1]), "--checkpoint", str(checkpoint),
                 "--threshold", "0.3", "--csv", str(target)])  # fmt: skip
    table = pd.read_csv(target, keep_default_na=False)
    assert code == 1 and len(table) == 2 and (table["threshold"] == 0.3).all()
    good = table[table["image_path"].str.endswith("good.jpg")].iloc[0]
    assert good["verdict"] == ("abnormal" if float(good["probability"]) >= 0.3 else "normal")
    assert float(good["study_probability"]) == pytest.approx(float(good["probability"]))


def test_predict_command_user_mistakes_exit_2(checkpoint, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--checkpoint", str(checkpoint)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_verdicts_use_the_cards_class_names_and_mixed_tasks_are_refused(
    checkpoint, image_folders, tmp_path, capsys
):
    fracture = tmp_path / "fracture"
    shutil.copytree(checkpoint, fracture)
    card = read_card(fracture)
    card.positive_class, card.negative_class = "fractured", "not fractured"
    write_card(fracture, card)
    target = tmp_path / "p.csv"
    main(["predict", str(image_folders[1]), "--checkpoint", str(fracture), "--csv", str(target)])
    verdicts = set(pd.read_csv(target, keep_default_na=False)["verdict"])
    assert verdicts <= {"fractured", "not fractured", "unreadable"} and verdicts - {"unreadable"}
    capsys.readouterr()
    mixed = ["predict", str(image_folders[1]), "--checkpoint", str(checkpoint), str(fracture)]
    assert main(mixed) == 2
    assert "trained for different tasks" in capsys.readouterr().err
