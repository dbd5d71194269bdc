"""CAMs for the one-logit model: exactness, signs, thread safety, overlays, trust, the CLI."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nextray_core.errors import ConfigError
from nextray_core.explain import (
    METHODS,
    LogitTarget,
    available_colormaps,
    display_maps,
    explain_batch,
    faithfulness,
    localisation_frame,
    localisation_report,
    localisation_scores,
    overlay,
    predict_with_cam,
    upsample_map,
)
from nextray_core.model import build_model, output_linear

FRACATLAS_MINI = Path(__file__).parent / "data" / "fracatlas_mini"
SIZE = 96  # layer4 maps are 3 x 3


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A random ResNet-152 whose head is rescaled so probabilities are not all 0 or 1."""
    torch.manual_seed(1)
    net = build_model("resnet152").eval()
    with torch.no_grad():
        pooled = predict_with_cam(net, torch.randn(8, 3, SIZE, SIZE)).pooled_features
        linear = output_linear(net)
        linear.weight.div_((pooled @ linear.weight[0]).std() / 2)
        linear.bias.copy_(0.3 - (pooled @ linear.weight[0]).mean())
    return net


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _library_raw_gradcam(net: nn.Module, x: torch.Tensor, target: str) -> np.ndarray:
    """pytorch-grad-cam's own Grad-CAM on the real model's layer4, before ReLU and scaling."""
    from pytorch_grad_cam import GradCAM

    with GradCAM(model=net, target_layers=[net.layer4]) as cam:
        cam(input_tensor=x, targets=[LogitTarget(target) for _ in x])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = cam.get_cam_image(x, net.layer4, None, acts, grads, False)
    net.zero_grad(set_to_none=True)
    return raw


def test_cam_equals_library_gradcam_raw_and_displayed(model, batch):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image

    result = predict_with_cam(model, batch)
    cams = result.cams_abnormal.numpy()
    cells = cams.shape[1] * cams.shape[2]
    raw = _library_raw_gradcam(model, batch, "abnormal")
    assert cams.shape == raw.shape == (4, 3, 3)
    np.testing.assert_allclose(cams, raw * cells, rtol=1e-4, atol=1e-4 * np.abs(cams).max())
    # Like with like: the library's pipeline (ReLU, min-max + resize per layer, then min-max
    # of the layer mean) applied to our map gives its displayed map.
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        shown = cam(input_tensor=batch, targets=[LogitTarget("abnormal") for _ in batch])
    model.zero_grad(set_to_none=True)
    ours = scale_cam_image(scale_cam_image(np.maximum(cams, 0), (SIZE, SIZE)))
    np.testing.assert_allclose(ours, shown, atol=1e-4)


def test_cam_mean_plus_bias_is_the_logit_and_probability_matches_the_model(model, batch):
    result = predict_with_cam(model, batch)
    with torch.no_grad():
        expected = torch.sigmoid(model(batch))[:, 0]
    torch.testing.assert_close(result.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert float(result.probabilities.min()) > 0.02 and float(result.probabilities.max()) < 0.98
    bias = float(output_linear(model).bias.detach())
    scale = float(result.cams_abnormal.abs().max())  # float32 sums of large terms
    torch.testing.assert_close(
        result.cams_abnormal.mean((1, 2)) + bias, result.logits, rtol=0, atol=1e-5 * scale
    )
    assert result.pooled_features.shape == (4, 2048)


def test_normal_evidence_is_the_negative_map(model, batch):
    raw_abnormal = _library_raw_gradcam(model, batch, "abnormal")
    raw_normal = _library_raw_gradcam(model, batch, "normal")
    np.testing.assert_allclose(raw_normal, -raw_abnormal, rtol=1e-5, atol=1e-7)
    cams = predict_with_cam(model, batch).cams_abnormal
    normal = explain_batch(model, batch, "cam", "normal").maps
    np.testing.assert_allclose(normal, display_maps(-cams, SIZE).numpy(), atol=1e-6)
    abnormal = explain_batch(model, batch, "cam", "abnormal").maps
    # Where one map shows evidence the other shows none (before upsampling blurs the border).
    assert ((cams > 0).numpy() != (cams < 0).numpy()).any()
    assert not np.allclose(normal, abnormal)


@pytest.mark.parametrize("arch", ["resnet101", "densenet169"])
def test_other_architectures_give_maps_and_the_models_probability(arch):
    torch.manual_seed(0)
    net = build_model(arch).eval()
    x = torch.randn(2, 3, 64, 64)
    result = predict_with_cam(net, x)
    with torch.no_grad():
        expected = torch.sigmoid(net(x))[:, 0]
    torch.testing.assert_close(result.probabilities, expected)
    bias = float(output_linear(net).bias.detach())
    scale = float(result.cams_abnormal.abs().max())
    torch.testing.assert_close(
        result.cams_abnormal.mean((1, 2)) + bias, result.logits, rtol=0, atol=1e-5 * scale
    )
    # The library sees the post-ReLU features too, so its Grad-CAM matches ours exactly.
    ours = explain_batch(net, x, "cam")
    library = explain_batch(net, x, "gradcam")
    assert ours.maps.shape == library.maps.shape == (2, 64, 64)
    cells = ours.raw_maps[0].size
    np.testing.assert_allclose(library.raw_maps * cells, ours.raw_maps, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours.maps, library.maps, atol=1e-5)


def _model_state(net: nn.Module) -> tuple:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in net.modules()
    )
    flags = tuple(p.requires_grad for p in net.parameters())
    grads = sum(p.grad is not None for p in net.parameters())
    return net.training, hooks, flags, grads


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "eigencam"])
def test_library_methods_give_display_maps_and_leave_the_model_alone(model, batch, method):
    before = _model_state(model)
    x = batch[:3]
    for target in ("abnormal", "normal"):
        result = explain_batch(model, x, method, target)
        assert result.maps.shape == (3, SIZE, SIZE) and result.maps.dtype == np.float32
        assert result.raw_maps.shape == (3, 3, 3)
        assert result.maps.min() >= 0 and result.maps.max() == pytest.approx(1.0)
        np.testing.assert_allclose(
            result.probabilities, predict_with_cam(model, x).probabilities.numpy(), rtol=1e-5
        )
        assert result.pooled_features.shape == (3, 2048)
    assert _model_state(model) == before == (False, 0, before[2], 0)


def test_gradient_methods_reduce_to_cam_for_this_head(model, batch):
    ours = explain_batch(model, batch, "cam", "normal")
    for method in ("gradcam", "hirescam", "xgradcam"):
        library = explain_batch(model, batch, method, "normal")
        np.testing.assert_allclose(library.raw_maps * 9, ours.raw_maps, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(library.maps, ours.maps, atol=1e-5)


def test_library_target_is_not_the_argmax_default(model, batch):
    """A one-unit output's argmax is always 0, so the library default would ignore 'normal'."""
    x = batch[:3]
    abnormal = explain_batch(model, x, "gradcam", "abnormal").raw_maps
    np.testing.assert_allclose(explain_batch(model, x, "gradcam", "normal").raw_maps, -abnormal)
    abnormal = explain_batch(model, x, "layercam", "abnormal").maps
    normal = explain_batch(model, x, "layercam", "normal").maps
    assert np.abs(abnormal - normal).max() > 0.02


@pytest.mark.slow
def test_scorecam_runs_with_one_logit_targets():
    torch.manual_seed(0)
    net = build_model("resnet152").eval()
    before = _model_state(net)  # eval mode, no hooks, the requires_grad flags, no gradients
    x = torch.randn(1, 3, 48, 48)
    result = explain_batch(net, x, "scorecam", batch_size=256)
    assert result.maps.shape == (1, 48, 48) and 0 <= result.maps.min() <= result.maps.max() <= 1
    assert _model_state(net) == before


@pytest.mark.parametrize("method", ["cam", "gradcam", "layercam"])
def test_concurrent_calls_on_one_model_match_serial_ones(model, method):
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(1, 3, 64, 64, generator=generator) for _ in range(8)]
    serial = [explain_batch(model, b, method) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda b: explain_batch(model, b, method), batches))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(one.maps, other.maps, atol=1e-5)
        np.testing.assert_allclose(one.probabilities, other.probabilities, rtol=1e-5)
    # Different inputs really give different maps, so a mix-up would be caught.
    assert not np.allclose(serial[0].maps, serial[1].maps)
    assert _model_state(model)[:2] == (False, 0)


def test_bad_method_target_or_training_mode_is_refused(model, batch):
    with pytest.raises(ConfigError, match="gradcam"):
        explain_batch(model, batch, "gradcamm")
    with pytest.raises(ConfigError, match="abnormal"):
        explain_batch(model, batch, "cam", "fracture")
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            predict_with_cam(model, batch)
    finally:
        model.eval()


def test_every_library_method_names_a_pytorch_grad_cam_class():
    # the names live in the torch-free nextray_core.options; a renamed class upstream fails here
    import pytorch_grad_cam

    from nextray_core.options import FINE_METHODS, LIBRARY_METHODS

    assert set(METHODS) == {"cam", *LIBRARY_METHODS, *FINE_METHODS}
    for name in {**LIBRARY_METHODS, **FINE_METHODS}.values():
        assert isinstance(getattr(pytorch_grad_cam, name), type), name


@pytest.mark.parametrize("method", ["gradcam-layer3", "layercam-layer3"])
def test_layer3_maps_are_twice_as_fine_and_touch_no_parameter(resnet152, method):
    model = resnet152
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = [p.requires_grad for p in model.parameters()]
    fine = explain_batch(model, batch, method)
    coarse = explain_batch(model, batch, "cam")
    assert fine.raw_maps.shape == (2, 4, 4) and coarse.raw_maps.shape == (2, 2, 2)
    assert fine.maps.shape == (2, 64, 64) and fine.maps.min() >= 0 and fine.maps.max() <= 1
    # the same forward pass answers: the probabilities do not depend on the map method
    np.testing.assert_allclose(fine.probabilities, coarse.probabilities, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == before


# --- overlays -------------------------------------------------------------------------------


def test_map_peak_lands_on_the_same_place_in_a_non_square_original():
    size, height, width = 64, 300, 500
    rows, cols = np.mgrid[0:size, 0:size]
    square = np.exp(-((rows - 16) ** 2 + (cols - 48) ** 2) / 18.0)  # peak at (16, 48) of 64
    up = upsample_map(square, (height, width))
    assert up.shape == (height, width)
    peak = np.unravel_index(np.argmax(up), up.shape)
    assert abs(peak[0] - 16.5 / size * height) <= 3 and abs(peak[1] - 48.5 / size * width) <= 4
    # A coarse 3 x 3 map: cell (1, 2) is centred at 1/2 of the height and 5/6 of the width.
    coarse = np.zeros((3, 3))
    coarse[1, 2] = 1.0
    up = upsample_map(coarse, (height, width))
    rows, cols = np.mgrid[0:height, 0:width]
    centroid = (rows * up).sum() / up.sum(), (cols * up).sum() / up.sum()
    assert abs(centroid[0] - height / 2) < 0.04 * height
    assert abs(centroid[1] - 5 * width / 6) < 0.04 * width
    image = np.full((height, width), 0.5, dtype=np.float32)
    rgb = overlay(image, coarse, colormap="jet", opacity=0.6)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[height // 2, 5 * width // 6]) != (128, 128, 128)  # coloured at the peak
    assert tuple(rgb[height // 2, width // 6]) == (128, 128, 128)  # plain far from it


def test_overlay_leaves_regions_without_evidence_untouched():
    gray = np.random.default_rng(0).integers(0, 256, size=(120, 90), dtype=np.uint8)
    cam = np.array([[-3.0, -1.0], [-2.0, 5.0]])  # only the bottom-right cell is evidence
    rgb = overlay(gray, cam, colormap="inferno", opacity=0.5)
    assert rgb.shape == (120, 90, 3)
    np.testing.assert_array_equal(rgb[:30, :22], np.repeat(gray[:30, :22, None], 3, axis=2))
    assert np.abs(rgb[-1, -1].astype(int) - int(gray[-1, -1])).max() > 0
    # No opacity, or no positive evidence at all: the plain radiograph.
    plain = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(overlay(gray, cam, opacity=0.0), plain)
    np.testing.assert_array_equal(overlay(gray, -np.abs(cam)), plain)
    as_float = overlay(gray.astype(np.float32) / 255, cam, colormap="inferno", opacity=0.5)
    assert np.abs(as_float.astype(int) - rgb).max() <= 1


def test_colormaps_are_listed_and_unknown_ones_refused():
    names = available_colormaps()
    assert {"jet", "turbo", "inferno", "viridis"} <= set(names)
    with pytest.raises(ConfigError, match="colormap"):
        overlay(np.zeros((4, 4)), np.ones((2, 2)), colormap="no-such-map")


# --- faithfulness ---------------------------------------------------------------------------


class _TopLeftBrightness(nn.Module):
    """Toy model whose logit is the mean of the top-left quadrant: the truth is known."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return self.scale * x[:, :, :half, :half].mean((1, 2, 3))[:, None]


def test_faithfulness_rewards_maps_that_point_at_what_the_model_uses():
    size = 32
    x = torch.zeros(2, 3, size, size)  # 0 = the mean after normalisation
    x[:, :, : size // 2, : size // 2] = 1.0  # bright where the model looks: p = sigmoid(2)
    right = torch.zeros(2, size, size)
    right[:, : size // 2, : size // 2] = 1.0
    wrong = torch.zeros(2, size, size)
    wrong[:, size // 2 :, size // 2 :] = 1.0
    toy = _TopLeftBrightness().eval()
    good = faithfulness(toy, x, right, baseline="mean")
    bad = faithfulness(toy, x, wrong, baseline="mean")
    assert good.shape == (2,) and (good > 0.25).all() and (bad <= 0).all()
    np.testing.assert_allclose(faithfulness(toy, x, 1 - right, baseline="mean"), -good, atol=1e-6)
    blurred = faithfulness(toy, x, right, baseline="blur")  # blur removes only the edges
    assert (blurred > 0).all() and (blurred > faithfulness(toy, x, wrong, baseline="blur")).all()
    # Explaining "normal" flips which removal helps.
    assert (faithfulness(toy, x, right, target="normal", baseline="mean") < 0).all()


def test_faithfulness_on_resnet_is_a_bounded_score_per_image(model, batch):
    x = batch[:2]
    maps = explain_batch(model, x).maps
    scores = faithfulness(model, x, maps, fractions=(0.2, 0.6))
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1) and np.any(scores != 0)
    again = faithfulness(model, x, maps, fractions=(0.2, 0.6))
    np.testing.assert_allclose(scores, again)
    road = faithfulness(model, batch[:1, :, :32, :32], maps[:1, :32, :32], baseline="road",
                        fractions=(0.5,))  # fmt: skip
    assert road.shape == (1,) and abs(road[0]) <= 1
    with pytest.raises(ConfigError):
        faithfulness(model, batch, maps, fractions=(0.0, 1.0))


# --- localisation ---------------------------------------------------------------------------


def test_localisation_hit_and_energy_share_for_a_hand_made_map():
    cam = np.zeros((10, 20))
    cam[2, 3] = 3.0  # peak: pixel centre (3.5/20, 2.5/10) = (0.175, 0.25)
    cam[8, 15] = 1.0
    cam[0, 0] = -5.0  # negative evidence is ignored
    inside = [(0.15, 0.25, 0.1, 0.2)]  # x 0.10-0.20, y 0.15-0.35
    hit, share = localisation_scores(cam, inside)
    assert hit and share == pytest.approx(0.75)
    elsewhere = [(0.775, 0.85, 0.1, 0.2)]  # covers only the smaller blob (0.775, 0.85)
    hit, share = localisation_scores(cam, elsewhere)
    assert not hit and share == pytest.approx(0.25)
    hit, share = localisation_scores(cam, inside + elsewhere)  # union of boxes
    assert hit and share == pytest.approx(1.0)
    hit, share = localisation_scores(np.zeros((4, 4)), inside)
    assert not hit and np.isnan(share)
    # The same box fits the map at any resolution: stretch to a non-square original.
    big = upsample_map(cam.clip(0), (50, 200))
    assert localisation_scores(big, inside)[0]


def test_localisation_report_per_body_part_with_counts():
    frame = pd.DataFrame(
        {
            "region": ["hand", "hand", "hand", "leg", "leg"],
            "pointing_hit": [True, False, True, False, False],
            "energy_inside": [0.5, 0.1, 0.3, 0.0, np.nan],
        }
    )
    report = localisation_report(frame)
    assert list(report.index) == ["hand", "leg", "all"]
    assert report.loc["hand", "hit_rate"] == pytest.approx(2 / 3)
    assert report.loc["hand", "mean_energy_inside"] == pytest.approx(0.3)
    assert report.loc["leg", "images"] == 2 and report.loc["leg", "scored"] == 1
    assert report.loc["all", "hits"] == 2 and report.loc["all", "scored"] == 4
    low, high = report.loc["hand", ["hit_rate_low", "hit_rate_high"]]
    assert 0 < low < 2 / 3 < high < 1


def test_eigencam_projection_matches_the_librarys_up_to_its_arbitrary_sign():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from nextray_core.explain.methods import _first_component

    acts = np.abs(np.random.default_rng(0).normal(size=(2, 64, 3, 4))).astype(np.float32)
    library, ours = get_2d_projection(acts), _first_component(acts)
    sign = np.sign((library * ours).sum((1, 2)))[:, None, None]
    np.testing.assert_allclose(library * sign, ours, atol=1e-4)
    assert ((ours * acts.sum(1)).sum((1, 2)) > 0).all()  # oriented along the summed maps


def test_localisation_frame_joins_fracatlas_boxes_with_maps():
    boxes = pd.DataFrame(
        {
            "image_id": ["a.jpg", "a.jpg", "b.jpg"],
            "x_center": [0.25, 0.9, 0.75],
            "y_center": [0.25, 0.9, 0.75],
            "width": [0.5, 0.1, 0.5],
            "height": [0.5, 0.1, 0.5],
        }
    )
    index = pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "region": ["hand"] * 3})
    top_left = np.zeros((4, 4))
    top_left[0, 0] = 1.0
    frame = localisation_frame(index, [top_left, top_left, top_left], boxes)
    assert list(frame["image_id"]) == ["a.jpg", "b.jpg"]  # c.jpg has no fracture box
    assert list(frame["boxes"]) == [2, 1] and list(frame["pointing_hit"]) == [True, False]
    assert localisation_report(frame).loc["hand", "hit_rate"] == 0.5
