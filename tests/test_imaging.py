"""read_radiograph on real radiographs (FracAtlas JPEG, pydicom's CR/CT/MR test DICOMs), PNGs
made here, and every kind of bad input a user can hand the CLI or the dashboard."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from nextray_core.errors import ImageReadError, NotARadiographWarning
from nextray_core.imaging import MAX_PIXELS, Radiograph, looks_like_colour_photo, read_radiograph

REPO = Path(__file__).resolve().parents[1]
JPEG_DIRS = (
    REPO / "tests" / "data" / "fracatlas_mini" / "images",
    REPO.parent / "shared" / "data" / "fracatlas" / "images",
)


@pytest.fixture(scope="module")
def fracatlas_jpeg() -> Path:
    """One real radiograph: the shipped mini copy if present, else the shared dataset."""
    for folder in JPEG_DIRS:
        found = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
        if found:
            return found[0]
    pytest.skip("no FracAtlas JPEG available")


def pydicom_data_file(name: str) -> Path:
    """A file from pydicom's test data (pydicom-data, a dev dependency); never downloads."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs pydicom-data (pip install pydicom-data)")
    return Path(path)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def gray_ramp(h: int = 48, w: int = 64) -> np.ndarray:
    """A uint8 image with every grey level and structure in both directions."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 4 + y * 2) % 256).astype(np.uint8)


def check_pixels(r: Radiograph, shape: tuple[int, int]) -> None:
    assert r.pixels.shape == shape
    assert r.pixels.dtype == np.float32
    assert 0.0 <= r.pixels.min() <= r.pixels.max() <= 1.0


# --- real radiographs and PNG/JPEG variants -------------------------------------------------


def test_fracatlas_jpeg_path_bytes_and_stream_agree(fracatlas_jpeg: Path) -> None:
    expected = np.asarray(Image.open(fracatlas_jpeg).convert("L"))
    from_path = read_radiograph(fracatlas_jpeg)
    data = fracatlas_jpeg.read_bytes()
    from_bytes = read_radiograph(data, name="upload.jpg")
    from_stream = read_radiograph(io.BytesIO(data), name="stream.jpg")
    check_pixels(from_path, expected.shape)
    np.testing.assert_array_equal(from_path.to_uint8(), expected)
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    np.testing.assert_array_equal(from_path.pixels, from_stream.pixels)
    meta = from_path.metadata
    assert meta["name"] == fracatlas_jpeg.name and meta["format"] == "jpeg"
    assert (meta["height"], meta["width"]) == expected.shape
    assert meta["bit_depth"] == 8 and meta["mode"] == "L" and meta["colour_photo"] is False
    assert from_bytes.metadata["name"] == "upload.jpg"
    assert from_stream.metadata["name"] == "stream.jpg"


def test_png_8bit_exact(tmp_path: Path) -> None:
    arr = gray_ramp()
    path = tmp_path / "scan.png"
    Image.fromarray(arr).save(path)
    r = read_radiograph(path)
    check_pixels(r, arr.shape)
    np.testing.assert_array_equal(r.to_uint8(), arr)
    assert r.to_uint8().dtype == np.uint8
    assert r.metadata["bit_depth"] == 8 and r.metadata["format"] == "png"


def test_png_16bit_keeps_precision_and_scales_by_bit_depth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    arr[0, :3] = (0, 1, 65535)
    path = tmp_path / "sixteen.png"
    Image.fromarray(arr).save(path)
    r = read_radiograph(path)
    check_pixels(r, arr.shape)
    assert r.metadata["bit_depth"] == 16 and r.metadata["mode"].startswith("I")
    np.testing.assert_allclose(r.pixels * 65535.0, arr, atol=0.01)  # not quantised to 8 bits
    assert "rescaled_from" not in r.metadata and r.metadata["effective_bits"] == 16


def test_png_16bit_holding_12bit_data_is_read_by_its_real_range() -> None:
    arr = np.random.default_rng(0).integers(0, 4096, size=(40, 50), dtype=np.uint16)
    arr[0, :2] = (0, 4095)
    # no sBIT chunk: the value range says 12 bits, so 4095 is white, not 6% grey
    r12 = read_radiograph(png_bytes(Image.fromarray(arr)))
    np.testing.assert_allclose(r12.pixels * 4095.0, arr, atol=0.01)
    assert r12.metadata["effective_bits"] == 12 and r12.metadata["rescaled_from"] == "value range"
    # an sBIT chunk of 12 says the same even when the image never reaches 4,095
    dim = (arr // 2).astype(np.uint16)
    with_sbit = _with_sbit(png_bytes(Image.fromarray(dim)), 12)
    r = read_radiograph(with_sbit)
    np.testing.assert_allclose(r.pixels * 4095.0, dim, atol=0.01)
    assert r.metadata["rescaled_from"] == "sBIT chunk"


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    body = b"sBIT" + bytes([bits])
    chunk = (1).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("mode", ["P", "LA", "RGB", "RGBA", "1"])
def test_png_modes_become_the_same_grayscale(mode: str) -> None:
    arr = gray_ramp()
    img = Image.fromarray(arr)
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i, i, i)])  # L -> P, indices = grey
    elif mode in ("LA", "RGBA"):
        img = img.convert(mode)
        img.putalpha(Image.fromarray(255 - arr))  # alpha must be dropped, not composited
    elif mode == "1":
        arr = np.where(arr > 127, 255, 0).astype(np.uint8)
        img = Image.fromarray(arr).convert("1")
    else:
        img = img.convert(mode)
    r = read_radiograph(png_bytes(img), name=f"{mode}.png")
    assert r.metadata["mode"] == mode
    np.testing.assert_array_equal(r.to_uint8(), arr)
    assert r.metadata["colour_photo"] is False


def test_near_gray_rgb_is_not_flagged(fracatlas_jpeg: Path) -> None:
    gray = np.asarray(Image.open(fracatlas_jpeg).convert("L")).astype(np.int16)
    rng = np.random.default_rng(1)
    tint = np.stack([gray + 3, gray, gray - 2], axis=-1) + rng.integers(-3, 4, (*gray.shape, 3))
    rgb = np.clip(tint, 0, 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotARadiographWarning)
        r = read_radiograph(png_bytes(Image.fromarray(rgb)), name="mura_rgb.png")
    assert r.metadata["colour_photo"] is False and r.metadata["mode"] == "RGB"
    assert np.abs(r.to_uint8().astype(int) - gray).max() <= 6


def colour_photo(h: int = 120, w: int = 160) -> np.ndarray:
    """Gradients of different hues (what a phone photo of a hand looks like to the check)."""
    y, x = np.mgrid[0:h, 0:w]
    hsv = np.stack([x * 255 // w, np.full_like(x, 200), 80 + y * 175 // h], axis=-1)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def test_colour_photo_decodes_but_warns() -> None:
    photo = colour_photo()
    with pytest.warns(NotARadiographWarning, match="colour photograph"):
        r = read_radiograph(png_bytes(Image.fromarray(photo)), name="holiday.png")
    check_pixels(r, photo.shape[:2])
    assert r.metadata["colour_photo"] is True


def test_colour_check_ignores_small_coloured_annotations() -> None:
    rgb = np.repeat(gray_ramp(100, 100)[..., None], 3, axis=-1)
    assert not looks_like_colour_photo(rgb)
    rgb[10:30, 10:30] = (255, 0, 0)  # a red marker on 4% of the image
    assert not looks_like_colour_photo(rgb)
    assert looks_like_colour_photo(colour_photo())
    with pytest.raises(ValueError):
        looks_like_colour_photo(gray_ramp())


def test_jpeg_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, 20:] = 255  # left half dark, right half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", exif=exif, quality=95)
    r = read_radiograph(buf.getvalue(), name="phone.jpg")
    assert r.pixels.shape == (40, 20) and (r.metadata["height"], r.metadata["width"]) == (40, 20)
    assert r.pixels[:20].mean() < 0.1 and r.pixels[20:].mean() > 0.9  # left went to the top


# --- DICOM ----------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted() -> None:
    path = pydicom_data_file("RG3_UNCR.dcm")  # a CR tibia, MONOCHROME1 (bone stored dark)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    r = read_radiograph(path)
    check_pixels(r, raw.shape)
    corr = np.corrcoef(r.pixels[::4, ::4].ravel(), raw[::4, ::4].ravel())[0, 1]
    assert corr < -0.95
    meta = r.metadata
    assert meta["format"] == "dicom" and meta["photometric"] == "MONOCHROME1"
    assert meta["inverted"] is True and meta["modality"] == "CR"
    assert meta["body_part"] == "EXTREMITY" and "window" in meta["window_applied"]
    np.testing.assert_array_equal(read_radiograph(path.read_bytes()).pixels, r.pixels)


def test_dicom_monochrome2_rescale_and_window(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # ships with pydicom itself
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    r = read_radiograph(get_testdata_file("CT_small.dcm"))
    check_pixels(r, hu.shape)
    assert r.metadata["inverted"] is False and r.metadata["photometric"] == "MONOCHROME2"
    assert "min-max" in r.metadata["window_applied"]  # no window stored: full range
    np.testing.assert_allclose(r.pixels, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert r.metadata["pixel_spacing"] == pytest.approx((0.661468, 0.661468))

    ds.WindowCenter, ds.WindowWidth = 40, 400  # soft-tissue window, in HU after the rescale
    windowed = read_radiograph(dicom_bytes(ds), name="ct_windowed.dcm")
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)  # DICOM's LINEAR window (PS3.3 C.11.2)
    np.testing.assert_allclose(windowed.pixels, expected, atol=1e-5)
    assert "centre 40" in windowed.metadata["window_applied"]
    assert 0 < (windowed.pixels == 1).mean() < 1  # the window really clips

    ds.WindowCenter, ds.WindowWidth = 500, 6000  # wider than the data: a flat, unclipped image
    wide = read_radiograph(dicom_bytes(ds)).pixels
    np.testing.assert_allclose(wide, (hu - 499.5) / 5999 + 0.5, atol=1e-5)
    assert wide.min() > 0.05 and wide.max() < 0.95  # not stretched to [0, 1]


def test_dicom_voi_lut_sequence() -> None:
    r = read_radiograph(pydicom_data_file("vlut_04.dcm"))
    assert r.metadata["window_applied"].startswith("VOI LUT")
    assert r.pixels.min() >= 0 and r.pixels.max() > 0.5


def test_dicom_without_suffix_is_detected_by_preamble(tmp_path: Path) -> None:
    path = tmp_path / "IM000001"
    path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert read_radiograph(path).metadata["format"] == "dicom"


# --- refusals -------------------------------------------------------------------------------


def refused(source, *words: str, name: str | None = None) -> str:
    with pytest.raises(ImageReadError) as info:
        read_radiograph(source, name=name)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def test_multiframe_dicom_refused() -> None:
    refused(get_testdata_file("SC_rgb_rle_2frame.dcm"), "multi-frame", "2 frames")


def test_dicom_without_pixel_data_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    refused(dicom_bytes(ds), "without pixel data", "sr.dcm", name="sr.dcm")


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_truncated_and_malformed_dicoms_refused() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    refused(data[: len(data) // 2], "truncated or corrupt")
    refused(get_testdata_file("badVR.dcm"), "corrupt DICOM")  # NumberOfFrames '1A'


def test_compressed_dicom_without_decoder_names_the_package() -> None:
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    refused(path, "JPEG-LS", "pip install pylibjpeg")


def test_text_pdf_and_empty_files_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n")
    refused(tmp_path / "notes.txt", "unsupported file type '.txt'")
    (tmp_path / "fake.png").write_text("id,label\n1,0\n")
    refused(tmp_path / "fake.png", "not an image", "text file", "fake.png")
    refused(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an image", "PDF", name="report.pdf")
    refused(bytes(range(256)) * 4, "not an image", "unknown data")
    (tmp_path / "empty.jpg").write_bytes(b"")
    refused(tmp_path / "empty.jpg", "empty", "empty.jpg")
    refused(b"", "empty", name="upload.png")
    refused(io.BytesIO(b""), "empty")
    (tmp_path / "fake.dcm").write_text("hello")
    refused(tmp_path / "fake.dcm", "DICM")


def test_directory_and_missing_path_refused(tmp_path: Path) -> None:
    refused(tmp_path, "directory")
    refused(tmp_path / "nope.png", "no such file", "nope.png")
    refused(str(tmp_path / "nope.dcm"), "no such file")


def noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(2).integers(0, 256, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("load_truncated_images", [False, True])
def test_truncated_and_corrupt_images_refused(
    load_truncated_images: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Detection must not depend on PIL's global, which other libraries sometimes set to True.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated_images)
    jpeg = noisy_jpeg()
    png = png_bytes(Image.fromarray(gray_ramp(256, 256)))
    assert read_radiograph(jpeg).pixels.shape == (256, 256)  # the intact files are fine
    refused(jpeg[: len(jpeg) // 2], "truncated", "cut.jpg", name="cut.jpg")
    refused(png[: len(png) // 2], "truncated", name="cut.png")
    idat = png.index(b"IDAT") + 4
    corrupt = bytearray(png)
    corrupt[idat + 10 : idat + 14] = bytes(b ^ 0xFF for b in corrupt[idat + 10 : idat + 14])
    refused(bytes(corrupt), "corrupt", name="flipped.png")
    refused(png[:20] + b"\x00" * 20, "corrupt", "PNG header", name="header.png")


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (decoding it would be a bomb)."""
    data = png_bytes(Image.new("1", (8, 8)))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


@pytest.mark.parametrize("side", [8_000, 20_000])  # ours (64 MP); PIL's own error (400 MP)
def test_decompression_bomb_refused_before_decoding(side: int) -> None:
    assert side * side > MAX_PIXELS
    refused(png_claiming_size(side, side), "too large", name="bomb.png")


def test_decompression_bomb_refused_when_pil_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns between 89 and 179 MP; as an error here
        refused(png_claiming_size(10_000, 10_000), "too large")


def test_dicom_bomb_refused_from_header() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 10_000
    refused(dicom_bytes(ds), "too large", "100,000,000")


def test_unsupported_suffix_refused_even_if_content_is_an_image(tmp_path: Path) -> None:
    path = tmp_path / "scan.bmp"
    path.write_bytes(png_bytes(Image.fromarray(gray_ramp())))
    refused(path, "unsupported file type '.bmp'", ".png")
