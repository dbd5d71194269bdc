"""A fixed set of inputs that are NOT radiographs of the kind the model knows, built in code.

Used by the OOD benchmark (``scripts/ood_benchmark.py``) and the tests. Each class is a list of
encoded files (PNG or DICOM bytes) so that they go through the same reading and checks as a
user's file. Nothing here is shipped data: the synthetic classes are drawn with numpy/PIL, the
CT and MR slices are pydicom's own test files (NEMA WG04 samples) read from the installed
package, and the classes derived from radiographs (inverted, 12-bit, low contrast) transform
images the caller passes in (e.g. FracAtlas validation images).

Expected outcome per class (``EXPECTED``): "refuse" (sanity refuses it), "flag" (sanity or the
OOD score should flag it) or "accept" (a correct reading: 12-bit data rescaled, no flag).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EXPECTED: dict[str, str] = {
    "blank": "refuse",
    "tiny": "refuse",
    "flat_colour_blocks": "flag",
    "noise": "flag",
    "text_page": "flag",
    "colour_photo": "flag",
    "gradient_shapes": "flag",
    "chest_like": "flag",
    "skull_like": "flag",
    "ct_mr_slice": "flag",
    "inverted": "flag",
    "low_contrast": "flag",
    "twelve_bit": "accept",
}
DERIVED = ("inverted", "low_contrast", "twelve_bit")  # built from the caller's radiographs


def png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H x W or H x W x 3) or uint16 (H x W) array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def _blur(x: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray(_u8(x)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(image, dtype=np.float32) / 255.0


def blank(rng: np.random.Generator, size: int = 256) -> bytes:
    level = rng.choice([0.0, 0.02, 0.5, 1.0])
    noise = rng.integers(-1, 2, (size, size)) / 255.0 if rng.random() < 0.5 else 0.0
    return png(_u8(np.full((size, size), level) + noise))


def tiny(rng: np.random.Generator) -> bytes:
    side = int(rng.integers(1, 16))
    return png(rng.integers(0, 256, (side, side), dtype=np.uint8))


def flat_colour_blocks(rng: np.random.Generator, size: int = 256) -> bytes:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for _ in range(int(rng.integers(3, 8))):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return png(image)


def noise(rng: np.random.Generator, size: int = 256) -> bytes:
    kind = rng.integers(3)
    if kind == 0:
        x = rng.random((size, size))
    elif kind == 1:
        x = 0.5 + 0.2 * rng.standard_normal((size, size))
    else:
        x = _blur(rng.random((size, size)), 2.0) * 2 - 0.5  # smooth blobs
    return png(_u8(x))


def text_page(rng: np.random.Generator, size: int = 320) -> bytes:
    image = Image.new("L", (size, size), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(image)
    words = ["patient", "report", "normal", "findings", "no", "fracture", "seen", "wrist"]
    for row in range(8, size - 12, int(rng.integers(12, 20))):
        line = " ".join(rng.choice(words, int(rng.integers(3, 8))))
        draw.text((int(rng.integers(4, 20)), row), line, fill=int(rng.integers(0, 60)))
    return png(np.asarray(image))


def colour_photo(rng: np.random.Generator, size: int = 256) -> bytes:
    """Smooth colour fields, shapes and grain: what a phone photo of a scene looks like."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack(
        [np.sin(2 * np.pi * (a * xx + b * yy) + c) * 0.3 + 0.5 for a, b, c in rng.random((3, 3))],
        axis=-1,
    )
    image = Image.fromarray(_u8(base))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    array = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32) / 255
    return png(_u8(array + 0.03 * rng.standard_normal(array.shape)))


def gradient_shapes(rng: np.random.Generator, size: int = 256) -> bytes:
    """A grey ramp with bright and dark geometric shapes: a graphic, not anatomy."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.random() * np.pi
    x = 0.2 + 0.6 * (np.cos(angle) * xx + np.sin(angle) * yy) / 1.5
    image = Image.fromarray(_u8(x))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = (int(v) for v in rng.integers(0, size - 40, 2))
        box = [x0, y0, x0 + int(rng.integers(20, 90)), y0 + int(rng.integers(20, 90))]
        fill = int(rng.integers(0, 256))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
    array = np.asarray(image, dtype=np.float32) / 255
    return png(_u8(array + 0.01 * rng.standard_normal(array.shape)))


def chest_like(rng: np.random.Generator, size: int = 512) -> bytes:
    """A synthetic PA chest film: trunk, dark lungs, heart, spine, ribs, clavicles (bone bright)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jitter = lambda s: 1 + s * (rng.random() - 0.5)  # noqa: E731
    x = np.where(((xx - 0.5) / (0.42 * jitter(0.1))) ** 2 + ((yy - 0.6) / 0.6) ** 2 < 1, 0.55, 0.05)
    for side in (-1, 1):  # lungs
        cx = 0.5 + side * 0.17 * jitter(0.1)
        lung = ((xx - cx) / (0.13 * jitter(0.1))) ** 2 + ((yy - 0.47) / 0.3) ** 2 < 1
        x = np.where(lung, 0.18, x)
    heart = ((xx - 0.54) / 0.13) ** 2 + ((yy - 0.62) / 0.12) ** 2 < 1
    x = np.where(heart, 0.6, x)
    x = np.where(np.abs(xx - 0.5) < 0.03 * jitter(0.2), 0.8, x)  # spine
    for k in range(10):  # ribs: bright arcs over the lungs
        centre = 0.22 + 0.055 * k
        for side in (-1, 1):
            curve = centre + 0.06 * ((xx - 0.5) * side * 3) ** 2
            rib = (
                (np.abs(yy - curve) < 0.008) & (np.abs(xx - 0.5) > 0.04) & (np.abs(xx - 0.5) < 0.33)
            )
            x = np.where(rib, x + 0.25, x)
    clavicle = (np.abs(yy - (0.17 + 0.1 * np.abs(xx - 0.5))) < 0.01) & (np.abs(xx - 0.5) < 0.3)
    x = np.where(clavicle, 0.85, x)
    x = _blur(x, 3.0) + 0.02 * rng.standard_normal((size, size))
    return png(_u8(x))


def skull_like(rng: np.random.Generator, size: int = 448) -> bytes:
    """A synthetic lateral skull: bright vault ring, textured brain, jaw arc (another body part)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = np.sqrt(((xx - 0.5) / (0.38 + 0.04 * rng.random())) ** 2 + ((yy - 0.45) / 0.34) ** 2)
    x = np.where(r < 1.06, 0.35, 0.04)
    x = np.where((r > 0.95) & (r < 1.06), 0.85, x)
    x = x + np.where(r < 0.95, 0.1 * _blur(rng.random((size, size)), 6.0), 0)
    jaw = (np.abs(np.sqrt((xx - 0.45) ** 2 + (yy - 0.62) ** 2) - 0.25) < 0.02) & (yy > 0.72)
    x = np.where(jaw, 0.8, x)
    return png(_u8(_blur(x, 2.0) + 0.02 * rng.standard_normal((size, size))))


def ct_mr_slice(rng: np.random.Generator) -> bytes:
    """One of pydicom's CT/MR test slices (another modality), flipped/rotated at random."""
    import pydicom
    from pydicom.data import get_testdata_file

    name = rng.choice(["CT_small.dcm", "MR_small.dcm"])
    ds = pydicom.dcmread(get_testdata_file(str(name)))
    values = ds.pixel_array.astype(np.float32)
    values = (values - values.min()) / max(float(np.ptp(values)), 1.0)
    values = np.rot90(values, int(rng.integers(4)))
    if rng.random() < 0.5:
        values = values[:, ::-1]
    side = 256
    image = Image.fromarray(_u8(values)).resize((side, side), Image.Resampling.BILINEAR)
    return png(np.asarray(image))


def inverted(pixels: np.ndarray) -> bytes:
    """A radiograph (2-D float [0, 1], bone bright) saved as its negative."""
    return png(_u8(1.0 - pixels))


def low_contrast(pixels: np.ndarray) -> bytes:
    """A radiograph squeezed into 8% of the grey range (a far too wide window)."""
    return png(_u8(0.46 + 0.08 * pixels))


def twelve_bit(pixels: np.ndarray) -> bytes:
    """A radiograph as a 16-bit PNG holding 12-bit values (0..4,095), as detector exports do."""
    return png(np.round(np.clip(pixels, 0, 1) * 4095).astype(np.uint16))


GENERATED: dict[str, Callable[[np.random.Generator], bytes]] = {
    "blank": blank,
    "tiny": tiny,
    "flat_colour_blocks": flat_colour_blocks,
    "noise": noise,
    "text_page": text_page,
    "colour_photo": colour_photo,
    "gradient_shapes": gradient_shapes,
    "chest_like": chest_like,
    "skull_like": skull_like,
    "ct_mr_slice": ct_mr_slice,
}
_DERIVE: dict[str, Callable[[np.ndarray], bytes]] = {
    "inverted": inverted,
    "low_contrast": low_contrast,
    "twelve_bit": twelve_bit,
}


def build_ood_set(
    radiographs: Sequence[np.ndarray] = (), *, per_class: int = 12, seed: int = 0
) -> dict[str, list[bytes]]:
    """class -> ``per_class`` encoded files; derived classes use ``radiographs`` (float [0, 1]
    bone-bright arrays, e.g. ``read_radiograph(path).pixels`` of validation images) and are
    left out when none are given. The same seed gives the same bytes."""
    out: dict[str, list[bytes]] = {}
    for offset, (name, make) in enumerate(GENERATED.items()):
        rng = np.random.default_rng([seed, offset])
        out[name] = [make(rng) for _ in range(per_class)]
    chosen = list(radiographs)[:per_class]
    if chosen:
        for name, derive in _DERIVE.items():
            out[name] = [derive(np.asarray(pixels, dtype=np.float32)) for pixels in chosen]
    return out


def write_ood_set(files: dict[str, list[bytes]], folder: str | Path) -> list[Path]:
    """Write the set as ``folder/<class>/<class>_<n>.png`` (to look at, or to predict on)."""
    written = []
    for name, items in files.items():
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            path = Path(folder) / name / f"{name}_{i:02d}.png"
            path.write_bytes(data)
            written.append(path)
    return written
