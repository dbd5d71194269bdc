"""``nextray bench``: the figures hang together, the guard runs on real images, the CLI behaves.

A random ResNet-152 at 64 px with calibration images from tests/data/fracatlas_mini; one repeat,
no warm-up, and the torch backends (an int8 export would cost tens of seconds). No timing
thresholds: only relations that must hold whatever the machine's speed.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from nextray_core.bench_infer import BenchResult, bench_infer, guard_images, time_baseline
from nextray_core.checkpoint import ModelCard, read_card, save_checkpoint
from nextray_core.cli import build_parser, main
from nextray_core.datasets import load_dataset
from nextray_core.engine import BACKEND_CHOICES, GuardResult, calibration_tensors
from nextray_core.engine.backends import cpu_supports_bf16
from nextray_core.errors import DatasetError
from nextray_core.index import INDEX_COLUMNS
from nextray_core.runs import PREDICTIONS_FILE, RUN_FILE, RUN_FORMAT
from nextray_core.transforms import Preprocessing

FRACATLAS_MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"
SIZE = 64


def write_minimal_run(folder: Path, index) -> Path:
    """The two files ``read_run`` needs: run.json and predictions.csv."""
    folder.mkdir(parents=True)
    (folder / RUN_FILE).write_text(json.dumps({"format": RUN_FORMAT, "default_threshold": 0.5}))
    index[list(INDEX_COLUMNS)].assign(probability=0.5).to_csv(
        folder / PREDICTIONS_FILE, index=False
    )
    return folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: on a shared 2-core machine, two spinning threads can run 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def index():
    return load_dataset("fracatlas", FRACATLAS_MINI)


@pytest.fixture(scope="module")
def checkpoint(resnet152, index, tmp_path_factory) -> Path:
    """A 64 px checkpoint with 16 calibration images and a ``run`` subfolder of 6 images."""
    folder = tmp_path_factory.mktemp("bench") / "ckpt"
    card = ModelCard(name="tiny-bench", preprocessing=Preprocessing(size=SIZE).to_dict())
    extras = calibration_tensors(index, SIZE, count=16)
    save_checkpoint(resnet152, folder, card, extra_tensors=extras)
    write_minimal_run(folder / "run", index.iloc[:6])
    return folder


@pytest.fixture(scope="module")
def result(checkpoint, tmp_path_factory) -> BenchResult:
    cache = tmp_path_factory.mktemp("cache")
    return bench_infer(
        checkpoint, backend="torch-fp32", repeats=1, warmup=0, matmul_size=256, cache_dir=cache
    )


def test_ratios_and_floors_follow_from_the_reported_figures(result):
    fast, base = result.fast, result.baseline
    assert result.speedup == pytest.approx(base.ms_per_image / fast.ms_per_image)
    assert result.batch_speedup == pytest.approx(fast.batch_images_per_s / base.batch_images_per_s)
    for kind in ("fp32", "bf16"):
        floor = 1000 * result.gflop_per_image / result.peak_gflops[kind]
        assert result.floor_ms[kind] == pytest.approx(floor)
    assert result.floor_multiple == pytest.approx(fast.ms_per_image / result.floor_ms["bf16"])
    batch_ms = 1000 / fast.batch_images_per_s
    assert result.batch_floor_multiple == pytest.approx(batch_ms / result.floor_ms["bf16"])
    for timing in (fast, base):
        assert 0 < timing.best_ms_per_image <= timing.ms_per_image
        assert timing.best_batch_images_per_s >= timing.batch_images_per_s > 0
    # ResNet-152 is 11.5 G multiply-adds at 224 px; FLOPs scale with the pixel count.
    assert result.gflop_per_image == pytest.approx(2 * 11.5 * (SIZE / 224) ** 2, rel=0.05)
    targets = dict(zip(("speed", "floor", "batch", "guard"), result.targets.values(), strict=True))
    assert targets["speed"] == (result.speedup >= 15)
    assert targets["floor"] == (result.floor_multiple <= 2.5)
    assert targets["batch"] == (fast.batch_images_per_s >= 20)
    assert targets["guard"] == result.guard["passed"]


def test_guard_runs_on_the_calibration_images_the_engine_checks_its_backend_on(result):
    # every stored image for a backend that sets no int8 ranges (here torch-fp32: all 16)
    assert set(result.guard) == {f.name for f in fields(GuardResult)}
    assert result.guard["images"] == 16
    assert "calibration" in result.guard_source
    # torch-fp32 against fp32: the very same numbers.
    assert result.guard["max_probability_change"] == 0
    assert result.guard["passed"] is True


def test_result_describes_itself(result):
    data = json.loads(json.dumps(result.to_dict()))
    assert data["backend"] == "torch-fp32" and data["input_size"] == SIZE
    assert data["baseline"]["name"] == "eager fp32 + pytorch-grad-cam GradCAM"
    assert {"cpu", "cores", "torch_threads"} <= set(data["machine"])
    assert data["versions"]["torch"] == torch.__version__
    assert data["date"][:4].isdigit() and "T" in data["date"]
    text = result.format()
    assert "fast: torch-fp32 + display_maps" in text
    assert f"{result.speedup:.1f}x" in text
    assert "median of 1 repeat" in text
    assert "backend: torch-fp32" in text  # the engine's own account of its choice


def test_baseline_leaves_the_model_as_it_found_it(resnet152):
    image = torch.randn(1, 3, SIZE, SIZE)
    timing = time_baseline(resnet152, image, image.repeat(2, 1, 1, 1), warmup=0, repeats=1)
    assert timing.ms_per_image > 0
    assert all(p.grad is None for p in resnet152.parameters())
    assert not resnet152.training
    assert not resnet152.layer4._forward_hooks  # the library's hooks are released


def test_guard_images_from_a_run_or_a_folder(checkpoint, index, tmp_path):
    card = read_card(checkpoint)
    assert guard_images(card) is None  # neither given: the caller uses the calibration images
    batch, labels, source = guard_images(card, run=checkpoint / "run")
    assert batch.shape == (6, 3, SIZE, SIZE) and len(labels) == 6
    assert set(labels) <= {0, 1} and "run" in source
    batch, labels, source = guard_images(card, images=FRACATLAS_MINI / "images", count=6)
    assert batch.shape == (6, 3, SIZE, SIZE) and "images in" in source
    assert set(labels) == {-1}  # FracAtlas folder names carry no MURA label
    moved = index.iloc[:3].assign(image_path=[str(tmp_path / f"gone{i}.jpg") for i in range(3)])
    with pytest.raises(DatasetError, match=r"missing.*--images"):
        guard_images(card, run=write_minimal_run(tmp_path / "stale", moved))


def test_cli_prints_the_table_and_writes_json(checkpoint, tmp_path, capsys):
    backend = "torch-bf16" if cpu_supports_bf16() else "torch-fp32"
    out = tmp_path / "bench.json"
    argv = ["bench", "--checkpoint", str(checkpoint), "--backend", backend, "--repeats", "1"]
    argv += ["--warmup", "0", "--threads", "1", "--json", str(out)]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "speed-up (baseline / fast)" in printed and "accuracy guard on" in printed
    data = json.loads(out.read_text())
    assert data["backend"] == backend and data["machine"]["torch_threads"] == 1
    assert "6 images of the run" in data["guard_source"]  # the checkpoint's run, by default
    assert data["guard"]["images"] == 6
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint", "{tmp}/nope"], "no checkpoint at"),
        (["--run", "{tmp}/norun"], "no run at"),
        (["--run", "{tmp}", "--images", "{tmp}"], "not both"),
    ],
)
def test_user_mistakes_give_one_clear_line(checkpoint, tmp_path, capsys, extra, message):
    argv = ["bench", "--checkpoint", str(checkpoint), "--repeats", "1"]
    argv += [arg.format(tmp=tmp_path) for arg in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_offers_every_engine_backend():
    for choice in BACKEND_CHOICES:
        assert build_parser().parse_args(["bench", "--backend", choice]).backend == choice
