"""``nextray explain`` end to end on a tiny saved checkpoint and real FracAtlas images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from nextray_core.checkpoint import ModelCard, save_checkpoint
from nextray_core.cli import main
from nextray_core.transforms import Preprocessing

FRACATLAS_MINI = Path(__file__).parent / "data" / "fracatlas_mini"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    files = sorted(FRACATLAS_MINI.glob("images/*/*.jpg"))
    if len(files) < 8:
        pytest.skip("tests/data/fracatlas_mini is not there")
    folder = tmp_path_factory.mktemp("images")
    picked = [shutil.copy(f, folder / f.name) for f in files[:8]]
    return [Path(p) for p in picked]


@pytest.fixture(scope="module")
def checkpoint(resnet152, images, tmp_path_factory) -> Path:
    """A random ResNet-152 at 64 px with OOD statistics fitted on six real images."""
    from nextray_core.explain import predict_with_cam
    from nextray_core.imaging import read_radiograph
    from nextray_core.ood import fit_ood
    from nextray_core.transforms import as_image_tensor, eval_transform

    prep = Preprocessing(size=64)
    transform = eval_transform(prep)
    batch = torch.stack(
        [transform(as_image_tensor(read_radiograph(p).pixels)) for p in images[2:8]]
    )
    ood = fit_ood(predict_with_cam(resnet152, batch).pooled_features, dims=4, holdout=0.34)
    card = ModelCard(name="tiny-test", preprocessing=prep.to_dict())
    card.extra["ood"] = ood.card_extra()
    folder = tmp_path_factory.mktemp("checkpoint")
    return save_checkpoint(resnet152, folder, card, extra_tensors=ood.to_tensors())


def test_explain_writes_original_size_overlays_and_reports_the_bad_file(
    checkpoint, images, tmp_path, capsys
):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    out = tmp_path / "out"
    code = main(
        [
            "explain", str(images[0]), str(corrupt), str(images[1]),
            "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "2",
            "--faithfulness", "--colormap", "inferno",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "broken.png" in captured.err
    table = pd.read_csv(out / "explanations.csv")
    assert list(table["path"]) == [str(images[0]), str(corrupt), str(images[1])]
    assert list(table["status"]) == ["ok", "error", "ok"]
    assert isinstance(table.loc[1, "error"], str) and table.loc[1, "error"]
    ok = table[table["status"] == "ok"]
    assert ok["probability"].between(0, 1).all() and (ok["method"] == "cam").all()
    assert ok["faithfulness"].abs().le(1).all()
    assert ok["ood_distance"].notna().all() and set(ok["ood_flag"]) <= {True, False}
    for path, name in zip(ok["path"], ok["overlay"], strict=True):
        with Image.open(path) as original, Image.open(out / name) as drawn:
            assert drawn.size == original.size and drawn.mode == "RGB"
            assert original.size[0] != original.size[1]  # non-square originals
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_explain_with_a_library_method_and_a_folder(checkpoint, images, tmp_path):
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    shutil.copy(images[0], folder / "a" / "same.jpg")
    shutil.copy(images[1], folder / "b" / "same.jpg")  # same stem: names must not collide
    out = tmp_path / "out"
    code = main(
        ["explain", str(folder), "--checkpoint", str(checkpoint), "--out", str(out),
         "--method", "gradcam++", "--target", "normal"]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "explanations.csv")
    assert len(table) == 2 and table["overlay"].nunique() == 2
    assert (table["method"] == "gradcam++").all() and (table["target"] == "normal").all()
    assert "faithfulness" not in table.columns
    assert all((out / name).is_file() for name in table["overlay"])


def test_explain_exits_non_zero_only_when_every_file_fails(checkpoint, tmp_path, capsys):
    bad = [tmp_path / "empty.png", tmp_path / "notes.txt"]
    bad[0].write_bytes(b"")
    bad[1].write_text("hello")
    out = tmp_path / "out"
    code = main(["explain", *map(str, bad), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert code == 1
    assert (pd.read_csv(out / "explanations.csv")["status"] == "error").all()
    assert "empty.png" in capsys.readouterr().err
    code = main(["explain", str(bad[0]), "--checkpoint", str(tmp_path), "--out", str(out)])
    assert code == 2  # not a checkpoint: a usage error
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["explain", str(empty), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
