"""The ``nextray`` command line as a user meets it: help, tables, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nextray_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "numpy", "pandas", "onnxruntime", "streamlit")

_PROBE = """
import sys
from nextray_core.cli import build_parser, main

commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
for command in commands:
    try:
        main([*command, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, (command, exit.code)
    loaded = [name for name in %r if name in sys.modules]
    print(" ".join(command) or "nextray", "|" + ",".join(loaded), file=sys.stderr)
"""


def test_help_of_every_command_imports_no_heavy_library():
    # a fresh interpreter: this test process has torch loaded already
    result = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" |")[:2] for line in result.stderr.splitlines() if " |" in line)
    assert {"nextray", "train", "predict", "evaluate", "explain", "card", "dashboard"} <= set(lines)
    assert {command: loaded for command, loaded in lines.items() if loaded} == {}


def _row(auc, low, high, sensitivity, specificity, count=40, positive=10):
    return {
        "count": count,
        "abnormal": positive,
        "auc": auc,
        "auc_low": low,
        "auc_high": high,
        "sensitivity": sensitivity,
        "sensitivity_low": sensitivity - 0.1,
        "sensitivity_high": min(1.0, sensitivity + 0.1),
        "specificity": specificity,
        "kappa": 0.4,  # not shown: the card prints AUC, sensitivity and specificity
    }


@pytest.fixture(scope="module")
def card_checkpoint(tmp_path_factory, resnet152):
    from nextray_core.checkpoint import ModelCard, save_checkpoint
    from nextray_core.transforms import Preprocessing

    folder = tmp_path_factory.mktemp("card") / "ckpt"
    metrics = {
        "validation (image level)": {
            "overall": _row(0.812, 0.74, 0.87, 0.8, 0.7),
            "hand": _row(0.775, 0.61, 0.9, 0.75, 0.65, count=20, positive=4),
        },
        "test (image level)": {"overall": _row(0.79, 0.7, 0.86, 0.71, 0.77)},
        "calibration": {"ece": 0.0412, "brier": 0.15},
        "threshold policy": "youden",
    }
    card = ModelCard(
        name="card-test",
        preprocessing=Preprocessing(size=64).to_dict(),
        default_threshold=0.42,
        metrics=metrics,
    )
    save_checkpoint(resnet152, folder, card, dtype=torch.float16)
    return folder


def test_card_prints_every_metric_table_with_its_intervals(card_checkpoint, capsys):
    assert main(["card", str(card_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "sha256 matches the card and the tensors fit a resnet152" in out
    assert "not a signature" in out
    validation = out.split("validation (image level):")[1].split("test (image level):")[0]
    lines = [line.split() for line in validation.strip().splitlines()]
    assert lines[0][:4] == ["region", "images", "positive", "AUC"]
    # regions in the card's order, overall last; AUC and sensitivity with their intervals
    assert [line[0] for line in lines[1:]] == ["hand", "overall"]
    assert lines[1][:7] == ["hand", "20", "4", "0.78", "(0.61-0.90)", "0.75", "(0.65-0.85)"]
    assert lines[2][:5] == ["overall", "40", "10", "0.81", "(0.74-0.87)"]
    # a metric without bounds is printed alone, not with an invented interval
    assert lines[2][7:] == ["0.70"]
    test = out.split("test (image level):")[1].splitlines()[2].split()
    assert test[:5] == ["overall", "40", "10", "0.79", "(0.70-0.86)"]
    assert "calibration: ece 0.041, brier 0.150" in out
    assert "threshold policy: youden" in out


def test_card_refuses_weights_that_would_not_load(card_checkpoint, tmp_path, capsys):
    import json

    folder = tmp_path / "relabelled"
    folder.mkdir()
    for path in card_checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    card = json.loads((folder / "card.json").read_text())
    card["architecture"] = "densenet169"  # the sha256 still matches the file
    (folder / "card.json").write_text(json.dumps(card))
    assert main(["card", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "do not fit a densenet169" in err and "sha256" not in err


def test_predict_console_table_wraps_long_notes_instead_of_cutting_them(
    card_checkpoint, tmp_path, capsys
):
    # an unreadable file whose name makes the error note far longer than 120 characters
    broken = tmp_path / ("a-rather-long-file-name-for-a-study-view-" * 3 + ".png")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    image = next((ROOT / "tests" / "data" / "fracatlas_mini" / "images").rglob("*.jpg"))
    code = main(["predict", str(image), str(broken), "--checkpoint", str(card_checkpoint)])
    assert code == 1  # one file could not be read
    out = capsys.readouterr().out
    table = out.split("Studies")[0]
    lines = table.strip().splitlines()[2:]  # the title, the header
    assert len(lines) > 2  # two images, and the long note continues on lines of its own
    from nextray_core.errors import NextRayError
    from nextray_core.imaging import read_radiograph

    with pytest.raises(NextRayError) as error:
        read_radiograph(broken)
    message = str(error.value)
    assert len(message) > 120
    # the whole message, its fix included, is in the table once the wrapped lines are joined
    assert "".join(message.split()) in "".join(table.split())
