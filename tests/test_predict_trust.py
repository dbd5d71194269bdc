"""`nextray predict` carries the input checks and the OOD flag into its CSV, console, verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_predict import tiny_member

from nextray_core.checkpoint import save_checkpoint
from nextray_core.cli import main
from nextray_core.imaging import read_radiograph
from nextray_core.loader import RadiographDataset
from nextray_core.ood import fit_ood_model
from nextray_core.ood_set import flat_colour_blocks, png
from nextray_core.predict import files_index
from nextray_core.transforms import eval_transform

FRACATLAS_MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"


@pytest.fixture(scope="module")
def checkpoint(resnet152, tmp_path_factory) -> Path:
    """A tiny 64 px member with layer2 + layer4 OOD statistics fitted on the mini images."""
    model, card = tiny_member(resnet152, seed=1)
    images = sorted(FRACATLAS_MINI.rglob("*.jpg"))
    if len(images) < 12:
        pytest.skip("tests/data/fracatlas_mini is not present")
    loader = torch.utils.data.DataLoader(
        RadiographDataset(files_index(images), eval_transform(card.prep)), batch_size=16
    )
    ood = fit_ood_model(model, loader, loader, dims=4)
    card.extra["ood"] = ood.card_extra()
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-ood"
    return save_checkpoint(model, folder, card, extra_tensors=ood.to_tensors())


@pytest.fixture
def study(tmp_path) -> Path:
    """One study folder: a real view, its negative, colour blocks, a black frame, noise."""
    folder = tmp_path / "study"
    folder.mkdir()
    source = sorted(FRACATLAS_MINI.rglob("*.jpg"))[0]
    shutil.copy(source, folder / "good.jpg")
    pixels = read_radiograph(source).pixels
    (folder / "negative.png").write_bytes(png(np.round((1 - pixels) * 255).astype(np.uint8)))
    (folder / "blocks.png").write_bytes(flat_colour_blocks(np.random.default_rng(0)))
    (folder / "black.png").write_bytes(png(np.zeros((80, 80), np.uint8)))
    (folder / "noise.png").write_bytes(
        png(np.random.default_rng(1).integers(0, 256, (96, 96), np.uint8))
    )
    return folder


def test_csv_flags_refusals_ood_and_leaves_flagged_views_out_of_the_study(checkpoint, study):
    target = study.parent / "p.csv"
    assert main(["predict", str(study), "--checkpoint", str(checkpoint), "--csv", str(target)]) == 1
    table = pd.read_csv(target, keep_default_na=False)
    rows = table.assign(name=table["image_path"].map(lambda p: Path(p).name)).set_index("name")
    assert "blank" in rows.at["black.png", "error"] and rows.at["black.png", "probability"] == ""
    assert "inverted" in rows.at["negative.png", "flags"].split(";")
    assert "flat_blocks" in rows.at["blocks.png", "flags"].split(";")
    assert "looks inverted" in rows.at["negative.png", "warning"]
    scored = rows[rows["error"] == ""]
    assert all(float(s) > 0 for s in scored["ood_score"])  # every scored view has an OOD score
    over = scored["ood_score"].astype(float) > scored["ood_threshold"].astype(float)
    assert (over == scored["flags"].str.contains("ood")).all()  # the flag is the score's verdict
    counted = scored[scored["counted"].astype(str) == "True"]
    assert set(counted.index) == set(scored.index[scored["flags"] == ""])
    assert "negative.png" not in counted.index and "blocks.png" not in counted.index
    study_row = rows.iloc[0]
    assert int(study_row["study_views_used"]) == len(counted)
    assert "inverted x1" in study_row["study_left_out"]
    if len(counted):
        expected = counted["probability"].astype(float).mean()
        assert float(study_row["study_probability"]) == pytest.approx(expected, abs=1e-6)
    else:
        assert study_row["study_verdict"] == "no usable view"


def test_console_prints_full_notes_and_keep_flagged_counts_every_scored_view(
    checkpoint, study, capsys
):
    main(["predict", str(study), "--checkpoint", str(checkpoint)])
    out = capsys.readouterr().out
    assert "Notes" in out and "flagged views left out (--keep-flagged)" in out
    assert "Invert it (bone bright) and try again; it was not flipped" in out  # not cut short
    assert "black.png" in out and "nothing to read" in out
    target = study.parent / "kept.csv"
    main(["predict", str(study), "--checkpoint", str(checkpoint), "--keep-flagged",
          "--csv", str(target)])  # fmt: skip
    table = pd.read_csv(target, keep_default_na=False)
    scored = table[table["error"] == ""]
    assert (table["study_views_used"] == len(scored)).all() and len(scored) == 4
    assert table["study_probability"].astype(float).iloc[0] == pytest.approx(
        scored["probability"].astype(float).mean(), abs=1e-6
    )
