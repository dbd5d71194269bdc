"""The inference engine: the accuracy guard, backend choice and fallback, the verdict cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nextray_core.checkpoint import ModelCard, save_checkpoint
from nextray_core.datasets import load_dataset
from nextray_core.engine import (
    CALIBRATION_IMAGES,
    CALIBRATION_LABELS,
    LIMITS,
    build_engine,
    calibration_tensors,
    compare,
    load_engine,
)
from nextray_core.engine import backends as backend_module
from nextray_core.engine.calibration import pick_rows
from nextray_core.explain.cam import CamResult, predict_with_cam
from nextray_core.transforms import Preprocessing

FRACATLAS_MINI = Path(__file__).parent / "data" / "fracatlas_mini"


def _result(probabilities, cams) -> CamResult:
    p = torch.tensor(probabilities, dtype=torch.float32)
    return CamResult(
        logits=torch.logit(p),
        probabilities=p,
        cams_abnormal=torch.as_tensor(np.asarray(cams), dtype=torch.float32),
        pooled_features=torch.zeros(len(p), 4),
    )


def test_guard_passes_a_faithful_copy_and_names_each_broken_limit():
    rng = np.random.default_rng(0)
    cams = rng.normal(size=(6, 4, 4))
    labels = np.array([0, 1, 0, 1, 0, 1])
    reference = _result([0.1, 0.8, 0.3, 0.6, 0.2, 0.9], cams)
    assert compare("same", reference, reference, labels).passed

    moved = _result([0.1, 0.8, 0.3, 0.6, 0.2 + 2 * LIMITS["probability"], 0.9], cams)
    verdict = compare("moved", reference, moved, labels)
    assert not verdict.passed and "probability" in verdict.failures[0]
    assert verdict.max_probability_change == pytest.approx(2 * LIMITS["probability"], abs=1e-6)

    swapped = _result([0.1, 0.8, 0.61, 0.6, 0.2, 0.9], cams)  # one pair reordered: AUC moves
    verdict = compare("swapped", reference, swapped, labels)
    assert verdict.auc_change == pytest.approx(1 / 9)
    assert any("AUC" in failure for failure in verdict.failures)

    many = rng.normal(size=(40, 4, 4))
    noisy = many.copy()
    noisy[2] = rng.normal(size=(4, 4))  # one map of forty unrelated to its reference
    probabilities = [0.5] * 40
    verdict = compare("noisy", _result(probabilities, many), _result(probabilities, noisy))
    assert verdict.min_map_correlation < LIMITS["map_correlation"] <= verdict.mean_map_correlation
    assert not verdict.passed and "map correlation" in verdict.failures[0]


def test_calibration_sample_alternates_classes_and_is_reproducible():
    index = load_dataset("fracatlas", FRACATLAS_MINI)
    rows = pick_rows(index, count=8, seed=0)
    assert len(rows) == 8 and list(rows["label"])[:4] == [1, 0, 1, 0]
    assert rows.equals(pick_rows(index, count=8, seed=0))
    tensors = calibration_tensors(index, size=32, count=8)
    assert tensors[CALIBRATION_IMAGES].shape == (8, 32, 32)
    assert tensors[CALIBRATION_IMAGES].dtype == torch.uint8


def test_no_calibration_images_means_fp32_and_says_why(resnet152):
    card = ModelCard(name="bare", preprocessing=Preprocessing(size=64).to_dict())
    engine = build_engine(resnet152, card, {})
    assert engine.backend_name == "torch-fp32"
    assert any("calibration" in note for note in engine.notes)


OFFSET = 50.0


def _offset_checkpoint(model: torch.nn.Module, folder: Path) -> Path:
    """The same fp32 function, but fed inputs of 50 +- 2: the signal is a small variation on a
    large offset (what a batch norm re-fitted on a new domain can create). bn1's running mean
    absorbs the offset, so fp32 answers exactly as before, while bf16 (8-bit mantissa) and int8
    rounding erase the signal: every fast path must be refused."""
    model = copy.deepcopy(model)
    prep = Preprocessing(size=64)
    shifted = Preprocessing(
        size=64,
        mean=tuple(m - OFFSET * s for m, s in zip(prep.mean, prep.std, strict=True)),
        std=prep.std,
    )
    with torch.no_grad():
        model.bn1.running_mean += OFFSET * model.conv1.weight.sum(dim=(1, 2, 3))
    index = load_dataset("fracatlas", FRACATLAS_MINI)
    card = ModelCard(name="offset", preprocessing=shifted.to_dict())
    return save_checkpoint(
        model, folder, card, extra_tensors=calibration_tensors(index, size=64, count=16)
    )


def test_a_backend_that_disagrees_with_fp32_is_refused_and_not_rebuilt(
    resnet152, tmp_path, monkeypatch
):
    folder = _offset_checkpoint(_well_conditioned(resnet152), tmp_path / "offset")
    engine = load_engine(folder, cache_dir=tmp_path / "cache")
    assert engine.backend_name == "torch-fp32"
    assert engine.guard and not any(v.passed for v in engine.guard.values())
    cached = json.loads(next((tmp_path / "cache").glob("*/guard.json")).read_text())
    assert set(cached["backends"]) == set(engine.guard)

    def must_not_build(*args, **kwargs):
        raise AssertionError("a backend known to fail was built again")

    monkeypatch.setattr("nextray_core.engine.engine.export_onnx", must_not_build)
    monkeypatch.setattr("nextray_core.engine.engine.TorchBf16", must_not_build)
    again = load_engine(folder, cache_dir=tmp_path / "cache")
    assert again.backend_name == "torch-fp32"
    assert {k: v.passed for k, v in again.guard.items()} == {
        k: v.passed for k, v in engine.guard.items()
    }


def test_small_jobs_answer_in_fp32_and_a_failing_candidate_falls_back(
    resnet152, tmp_path, monkeypatch
):
    folder = _offset_checkpoint(_well_conditioned(resnet152), tmp_path / "offset")

    def must_not_build(*args, **kwargs):
        raise AssertionError("a small job built a fast path")

    with monkeypatch.context() as patch:
        patch.setattr("nextray_core.engine.engine.export_onnx", must_not_build)
        patch.setattr("nextray_core.engine.engine.TorchBf16", must_not_build)
        small = load_engine(folder, cache_dir=tmp_path / "cache", expected_images=3)
    assert small.backend_name == "torch-fp32" and "3 image(s)" in small.reason
    assert not small.guard  # nothing was tried
    forced = load_engine(
        folder, cache_dir=tmp_path / "c2", backend="torch-mixed", expected_images=3
    )
    assert forced.backend_name == "torch-mixed"  # --backend still wins

    def broken_guard(*args, **kwargs):
        raise RuntimeError("the compiler gave up at batch 8")

    monkeypatch.setattr("nextray_core.engine.engine.run_batched", broken_guard)
    engine = load_engine(folder, cache_dir=tmp_path / "c3")  # any failure: not this path
    assert engine.backend_name == "torch-fp32" and not engine.guard
    assert any("could not be used" in note and "gave up" in note for note in engine.notes)


def _well_conditioned(model: torch.nn.Module) -> torch.nn.Module:
    """Residual branches scaled down (as a trained net's are): no chaotic amplification."""
    model = copy.deepcopy(model)
    for name, module in model.named_modules():
        if name.endswith("bn3"):
            module.weight.data.mul_(0.05)
    return model.eval()


def test_a_faithful_fast_backend_is_chosen_and_matches_fp32(resnet152, tmp_path):
    if not backend_module.cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 convolutions")
    index = load_dataset("fracatlas", FRACATLAS_MINI)
    model = _well_conditioned(resnet152)
    card = ModelCard(name="calm", preprocessing=Preprocessing(size=64).to_dict())
    extras = calibration_tensors(index, size=64, count=16)
    # labels unknown: with 16 images one swapped near-tie would move the AUC past its limit,
    # which is the guard working, not what this test is about
    extras[CALIBRATION_LABELS] = torch.full((16,), -1, dtype=torch.int8)
    folder = save_checkpoint(model, tmp_path / "calm", card, extra_tensors=extras)
    engine = load_engine(folder, backend="torch-bf16", cache_dir=tmp_path / "cache")
    batch = torch.rand(3, 3, 64, 64)
    fast, exact = engine.run(batch), predict_with_cam(engine.model, batch)
    assert (fast.probabilities - exact.probabilities).abs().max() <= LIMITS["probability"]
    auto = load_engine(folder, cache_dir=tmp_path / "cache")
    assert auto.backend_name != "torch-fp32"
    assert auto.guard[auto.backend_name].passed

    # the dashboard's way: fp32 answers at once, the checked fast path is swapped in later
    background = load_engine(folder, cache_dir=tmp_path / "cache", background=True)
    early = background.run(batch)  # whichever path answers, it answers like fp32
    assert (early.probabilities - exact.probabilities).abs().max() <= LIMITS["probability"]
    background.ready.join(timeout=300)
    assert background.backend_name == auto.backend_name


def test_forcing_an_unknown_backend_is_a_clear_error(resnet152):
    from nextray_core.errors import ConfigError

    card = ModelCard(name="bare", preprocessing=Preprocessing(size=64).to_dict())
    with pytest.raises(ConfigError, match="unknown backend"):
        build_engine(resnet152, card, {}, backend="tensorrt")


def test_answer_radiograph_gives_probability_map_and_notes(resnet152, tmp_path):
    from PIL import Image

    from nextray_core.engine import answer_radiograph
    from nextray_core.imaging import read_radiograph
    from nextray_core.transforms import as_image_tensor, eval_transform

    card = ModelCard(name="calm", preprocessing=Preprocessing(size=64).to_dict())
    engine = build_engine(_well_conditioned(resnet152), card, {}, backend="torch-fp32")
    image = sorted(FRACATLAS_MINI.glob("images/*/*.jpg"))[0]
    answer = answer_radiograph(engine, image.read_bytes(), image.name)
    pixels = read_radiograph(image).to_uint8()
    batch = eval_transform(card.prep)(as_image_tensor(torch.from_numpy(pixels)))[None]
    assert answer.probability == pytest.approx(
        float(predict_with_cam(engine.model, batch).probabilities[0]), abs=1e-6
    )
    assert answer.cam.shape == (64, 64) and answer.cam.min() >= 0 and answer.cam.max() <= 1
    assert answer.pixels.shape == pixels.shape and answer.notes == ()
    assert answer.backend == "torch-fp32" and answer.name == image.name

    colours = np.zeros((40, 40, 3), dtype=np.uint8)
    colours[:, :20] = (200, 30, 30)
    colours[:, 20:] = (20, 160, 40)
    Image.fromarray(colours).save(tmp_path / "holiday.png")
    photo = answer_radiograph(engine, tmp_path / "holiday.png")
    assert any("colour photograph" in note for note in photo.notes)


def test_add_calibration_keeps_the_checkpoint_as_it_was_and_adds_the_images(resnet152, tmp_path):
    from nextray_core.checkpoint import load_checkpoint, read_card
    from nextray_core.engine import add_calibration

    card = ModelCard(name="older", preprocessing=Preprocessing(size=64).to_dict())
    folder = save_checkpoint(
        resnet152, tmp_path / "older", card, dtype=torch.float16, max_file_mb=40
    )
    before = read_card(folder)
    add_calibration(folder, load_dataset("fracatlas", FRACATLAS_MINI), count=8)
    after = read_card(folder)
    assert after.weights_dtype == "float16" and len(after.weights_shards) == 3
    assert after.weights_sha256 != before.weights_sha256  # caches keyed on it start afresh
    model, _, extras = load_checkpoint(folder)
    assert extras[CALIBRATION_IMAGES].shape == (8, 64, 64)
    assert list(extras[CALIBRATION_LABELS][:2]) == [1, 0]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resnet152.state_dict()[name].half().float()), name
