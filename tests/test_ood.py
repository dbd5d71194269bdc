"""OOD distance on pooled features: the maths, the checkpoint round trip, real radiographs."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nextray_core.errors import CheckpointError, ConfigError
from nextray_core.explain import predict_with_cam
from nextray_core.ood import (
    KEYS,
    DepthOod,
    OodModel,
    collect_features,
    depth_features,
    fit_depth_ood,
    fit_ood,
    fit_ood_model,
    load_ood,
)
from nextray_core.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_transform

FRACATLAS_MINI = Path(__file__).parent / "data" / "fracatlas_mini"


def _low_rank(count: int, width: int = 50, rank: int = 5, seed: int = 0) -> torch.Tensor:
    fixed = torch.Generator().manual_seed(123)  # one subspace for every sample
    basis = torch.linalg.qr(torch.randn(width, rank, generator=fixed, dtype=torch.float64))[0]
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 1.0, rank, dtype=torch.float64)
    coords = torch.randn(count, rank, generator=generator, dtype=torch.float64) * scales
    noise = 0.05 * torch.randn(count, width, generator=generator, dtype=torch.float64)
    return (coords @ basis.T + noise + 2.0).float(), basis


def test_distance_is_mahalanobis_under_the_fitted_ppca_covariance():
    features, _ = _low_rank(200)
    ood = fit_ood(features, dims=5, calibration=features[:50])
    queries = torch.randn(7, 50)
    projection = ood.projection.double()
    inside = projection @ torch.diag(1 / ood.precision.double()) @ projection.T
    outside = (torch.eye(50, dtype=torch.float64) - projection @ projection.T) / float(
        ood.residual_precision
    )
    precision = torch.linalg.inv(inside + outside)
    centred = queries.double() - ood.mean.double()
    expected = torch.einsum("nf,fg,ng->n", centred, precision, centred).sqrt()
    torch.testing.assert_close(ood.score(queries).double(), expected, rtol=1e-4, atol=1e-4)


def test_small_steps_off_the_training_subspace_are_caught():
    features, basis = _low_rank(300)
    assert fit_ood(features, dims=5).info["calibration_images"] == 60  # 20% held out
    ood = fit_ood(features, dims=5, calibration=_low_rank(500, seed=2)[0])
    assert ood.info["fit_images"] == 300 and ood.info["calibration_images"] == 500
    ordinary, _ = _low_rank(400, seed=1)
    off = torch.randn(50)
    off = off - basis.float() @ (basis.float().T @ off)  # orthogonal to where images vary
    strange = ordinary[:10] + 1.0 * off / off.norm()  # smaller than the in-plane spread
    assert ood.flags(ordinary).float().mean() <= 0.05
    assert ood.flags(strange).all()


def test_round_trip_through_tensors_and_card_extra():
    features, _ = _low_rank(80)
    ood = fit_ood(features, dims=4, quantile=0.95)
    tensors, extra = ood.to_tensors(), ood.card_extra()
    assert set(tensors) == set(KEYS) and extra["quantile"] == 0.95 and extra["dims"] == 4
    assert sum(t.numel() for t in tensors.values()) == 50 + 50 * 4 + 4 + 1
    again = OodModel.from_tensors(tensors, extra)
    torch.testing.assert_close(again.score(features), ood.score(features))
    assert again.threshold == ood.threshold

    class Card:
        def __init__(self, extra):
            self.extra = extra

    assert load_ood({}, Card({})) is None
    assert load_ood(tensors, Card({"ood": extra})).threshold == ood.threshold
    with pytest.raises(CheckpointError, match="incomplete"):
        load_ood({k: v for k, v in tensors.items() if k != "ood.mean"}, Card({"ood": extra}))


def test_fitting_refuses_too_few_images_and_caps_dims():
    with pytest.raises(ConfigError):
        fit_ood(torch.randn(3, 10))
    ood = fit_ood(torch.randn(12, 30), dims=64, calibration=torch.randn(5, 30))
    assert ood.info["dims"] == 10 and ood.projection.shape == (30, 10)
    with pytest.raises(ValueError, match="N x 30"):
        ood.score(torch.randn(2, 31))


def _fracatlas_pixels() -> list[np.ndarray]:
    from nextray_core.imaging import read_radiograph

    files = sorted(FRACATLAS_MINI.glob("images/*/*.jpg"))
    if len(files) < 12:
        pytest.skip("tests/data/fracatlas_mini is not there")
    return [read_radiograph(path).pixels for path in files]


def test_colour_noise_and_inverted_radiographs_rank_above_real_ones(resnet152):
    """A random-init ResNet-152 at 64 px: fit on real radiographs, then show it strangers."""
    from nextray_core.transforms import as_image_tensor

    transform = eval_transform(Preprocessing(size=64))
    pixels = _fracatlas_pixels()
    real = torch.stack([transform(as_image_tensor(p)) for p in pixels])
    inverted = torch.stack([transform(as_image_tensor(1.0 - p)) for p in pixels[:4]])
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    colour = (torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) - mean) / std

    loader = [(real[:12], None), (real[12:], None)]  # like a DataLoader's (x, y) items
    features = collect_features(resnet152, loader)
    torch.testing.assert_close(features, predict_with_cam(resnet152, real).pooled_features)
    ood = fit_ood(features, dims=8, holdout=0.25)
    in_distribution = ood.score(features)
    for strangers in (colour, inverted):
        distances = ood.score(predict_with_cam(resnet152, strangers).pooled_features)
        assert distances.min() > in_distribution.max()
        assert ood.flags(predict_with_cam(resnet152, strangers).pooled_features).all()
    assert ood.flags(features).float().mean() <= 0.1


def test_depth_ood_round_trips_and_its_score_is_the_worst_depth_ratio():
    fit = {"layer2": _low_rank(120, seed=0)[0], "layer4": _low_rank(120, width=40, seed=1)[0]}
    calibration = {"layer2": _low_rank(60, seed=2)[0], "layer4": _low_rank(60, width=40, seed=3)[0]}
    ood = fit_depth_ood(fit, calibration, dims=5, quantile=0.95)
    assert ood.depths == ("layer2", "layer4") and ood.info["calibration_images"] == 60
    queries = {"layer2": torch.randn(6, 50), "layer4": torch.randn(6, 40)}
    ratios = [ood.parts[d].score(queries[d]) / ood.parts[d].threshold for d in ood.depths]
    torch.testing.assert_close(ood.score_depths(queries), torch.maximum(*ratios))
    assert (ood.score_depths(calibration) > ood.threshold).float().mean() <= 0.05 + 1e-9

    card = types.SimpleNamespace(extra={"ood": ood.card_extra()})
    again = load_ood(ood.to_tensors(), card)
    assert isinstance(again, DepthOod) and again.threshold == ood.threshold
    torch.testing.assert_close(again.score_depths(queries), ood.score_depths(queries))
    broken = {k: v for k, v in ood.to_tensors().items() if k != "ood.layer2.mean"}
    with pytest.raises(CheckpointError, match="incomplete"):
        load_ood(broken, card)


def test_depth_features_match_the_models_own_stages_and_the_engine_scores_with_them(resnet152):
    from nextray_core.checkpoint import ModelCard
    from nextray_core.engine import build_engine

    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = depth_features(resnet152, batch, ("layer2", "layer4"))
    with torch.no_grad():
        x = resnet152.maxpool(resnet152.relu(resnet152.bn1(resnet152.conv1(batch))))
        layer2 = resnet152.layer2(resnet152.layer1(x))
    torch.testing.assert_close(features["layer2"], layer2.mean(dim=(2, 3)))
    result = predict_with_cam(resnet152, batch)
    torch.testing.assert_close(features["layer4"], result.pooled_features, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="ResNet stages"):
        depth_features(resnet152, batch, ("layer5",))

    loader = [(batch[:2], None), (batch[2:], None)]
    fitted = fit_ood_model(resnet152, loader, loader, depths=("layer2", "layer4"), dims=1)
    card = ModelCard(name="t", preprocessing=Preprocessing(size=64).to_dict())
    card.extra["ood"] = fitted.card_extra()
    engine = build_engine(resnet152, card, fitted.to_tensors(), backend="torch-fp32")
    expected = fitted.score_depths(features)
    torch.testing.assert_close(engine.ood_score(batch, engine.run(batch)), expected)
