"""The Study viewer's display helpers: window/level, zoom and ground-truth boxes."""

from __future__ import annotations

import numpy as np
import pytest

from nextray_core.errors import ConfigError
from nextray_core.imaging import Radiograph
from nextray_core.viewer import draw_boxes, image_key, run_boxes, window_level, zoom_crop


def test_full_window_is_the_plain_display_and_a_narrow_one_spreads_a_band():
    pixels = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, -1)
    assert np.array_equal(window_level(pixels), Radiograph(pixels).to_uint8())
    narrow = window_level(pixels, centre=0.5, width=0.2)
    assert narrow[0, :40].max() == 0 and narrow[0, 61:].min() == 255
    assert narrow[0, 50] in (127, 128)  # the centre lands mid-grey
    with pytest.raises(ConfigError, match="width"):
        window_level(pixels, 0.5, 0)


def test_zoom_crops_around_the_point_and_stays_inside():
    image = np.arange(100 * 80).reshape(100, 80)
    assert zoom_crop(image, 1) is image
    crop = zoom_crop(image, 2, x=0.5, y=0.5)
    assert crop.shape == (50, 40) and crop[0, 0] == image[25, 20]
    corner = zoom_crop(image, 4, x=0.0, y=1.0)
    assert corner.shape == (25, 20) and corner[-1, 0] == image[-1, 0]
    with pytest.raises(ConfigError):
        zoom_crop(image, 0.5)


def test_boxes_are_drawn_where_their_fractions_say():
    gray = np.zeros((100, 200), dtype=np.uint8)
    drawn = draw_boxes(gray, [(0.5, 0.5, 0.2, 0.4)], thickness=1)
    assert drawn.shape == (100, 200, 3) and gray.max() == 0  # a copy
    green = (drawn[..., 1] == 255) & (drawn[..., 0] == 0)
    ys, xs = np.nonzero(green)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (80, 120, 30, 70)
    assert not green[50, 100]  # outlined, not filled


def test_run_boxes_come_from_the_run_or_say_why_not(tmp_path):
    (tmp_path / "boxes.csv").write_text(
        "image_id,x_center,y_center,width,height\na.jpg,0.5,0.5,0.1,0.1\n"
    )
    boxes, source = run_boxes(tmp_path, {})
    assert boxes == {"a.jpg": [(0.5, 0.5, 0.1, 0.1)]} and source.endswith("boxes.csv")
    (tmp_path / "boxes.csv").unlink()
    assert run_boxes(tmp_path, {"dataset": {"kind": "mura"}}) == (
        {},
        "the run's dataset (mura) has no boxes",
    )
    none, why = run_boxes(tmp_path, {"dataset": {"kind": "fracatlas", "root": str(tmp_path)}})
    assert none == {} and "not found" in why
    assert image_key({"image_path": "/x/IMG1.jpg", "image_id": ""}) == "IMG1.jpg"
    assert image_key({"image_path": "/x/y.jpg", "image_id": "IMG2.jpg"}) == "IMG2.jpg"
