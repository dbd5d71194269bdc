"""Input checks before the model: each generated input class gets its refusal or its flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nextray_core.imaging import read_radiograph
from nextray_core.ood_set import EXPECTED, build_ood_set, png
from nextray_core.sanity import CODES, UnusableImageError, check_radiograph, codes, excluded

FRACATLAS_MINI = Path(__file__).parent / "data" / "fracatlas_mini"
# the code each generated class must get (the first refusal, or the flag that excludes it)
CODE_FOR = {
    "blank": "blank",
    "tiny": "too_small",
    "flat_colour_blocks": "flat_blocks",
    "text_page": "flat_blocks",
    "colour_photo": "colour_photo",
    "inverted": "inverted",
    "low_contrast": "low_contrast",
}


@pytest.fixture(scope="module")
def radiographs() -> list[np.ndarray]:
    paths = sorted(FRACATLAS_MINI.rglob("*.jpg"))[:4]
    if not paths:
        pytest.skip("tests/data/fracatlas_mini is not present")
    return [read_radiograph(path).pixels for path in paths]


@pytest.fixture(scope="module")
def ood_set(radiographs) -> dict[str, list[bytes]]:
    return build_ood_set(radiographs, per_class=4, seed=0)


def test_real_radiographs_pass_without_notes(radiographs):
    for pixels in radiographs:
        assert check_radiograph(read_radiograph(png(np.round(pixels * 255).astype(np.uint8)))) == ()


@pytest.mark.parametrize("name", sorted(CODE_FOR))
def test_each_input_class_gets_its_refusal_or_flag(ood_set, name):
    for data in ood_set[name]:
        image = read_radiograph(data, name=f"{name}.png", warn=False)
        if EXPECTED[name] == "refuse":
            with pytest.raises(UnusableImageError, match=name) as caught:
                check_radiograph(image)
            assert caught.value.code == CODE_FOR[name] and CODES[caught.value.code] == "refuse"
        else:
            notes = check_radiograph(image)
            assert CODE_FOR[name] in codes(excluded(notes)).split(";")
            assert all(f"{name}.png" in note.message for note in notes)


def test_a_1x1_png_is_refused_as_too_small():
    with pytest.raises(UnusableImageError, match="1x1 pixels") as caught:
        check_radiograph(read_radiograph(png(np.zeros((1, 1), np.uint8))))
    assert caught.value.code == "too_small"
    notes = check_radiograph(read_radiograph(png(np.zeros((1, 1), np.uint8))), refuse=False)
    assert [n.code for n in notes] == ["too_small"]


def test_twelve_bit_data_is_rescaled_noted_and_still_counted(ood_set, radiographs):
    for data, pixels in zip(ood_set["twelve_bit"], radiographs, strict=True):
        image = read_radiograph(data, warn=False)
        notes = check_radiograph(image)
        assert [n.code for n in notes] == ["rescaled"] and not excluded(notes)
        assert "12-bit" in notes[0].message and "4,095" in notes[0].message
        np.testing.assert_allclose(image.pixels, pixels, atol=1 / 4095 + 1e-6)  # not near black


def test_inverted_is_noted_not_flipped(radiographs):
    negative = read_radiograph(png(np.round((1 - radiographs[0]) * 255).astype(np.uint8)))
    (note,) = check_radiograph(negative)
    assert note.code == "inverted" and "not flipped" in note.message
    np.testing.assert_allclose(negative.pixels, 1 - radiographs[0], atol=1 / 255 + 1e-6)
