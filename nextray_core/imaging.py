"""Read one radiograph (PNG, JPEG or DICOM; a path, bytes or a file object) as a grayscale array.

Everything downstream sees one shape: a 2-D float32 array in [0, 1] with bone bright (the
MONOCHROME2 convention) plus a metadata dict. Anything a user can get wrong (not an image,
empty, truncated, huge, multi-frame, ...) becomes an ``ImageReadError`` whose message names the
file and the fix, so the CLI and the dashboard can show it and carry on.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nextray_core.errors import ImageReadError, NotARadiographWarning

if TYPE_CHECKING:
    import pydicom

MAX_PIXELS: int = 50_000_000
SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

_FIX = "export the radiograph as PNG, JPEG or single-frame DICOM and try again"
_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
# Formats people upload by mistake, named in the message so they know what they sent.
_OTHER = {
    b"%PDF": "a PDF document",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"PK\x03\x04": "a ZIP archive",
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_DATA_BITS = (8, 10, 12, 14)  # what 16-bit PNG exports commonly hold, when not 16
# A colour photograph has many clearly coloured pixels; MURA's few RGB PNGs differ between
# channels by a few grey levels at most. Thresholds: chroma (max - min channel) above 40 of 255
# in more than 5% of the pixels (coloured arrows or labels on a radiograph stay well below).
_CHROMA_LEVELS = 40
_COLOURFUL_FRACTION = 0.05


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: ``pixels`` 2-D float32 in [0, 1], bright = dense (bone)."""

    pixels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_uint8(self) -> np.ndarray:
        """The pixels as 2-D uint8 (round(pixels * 255)), for display and PIL."""
        return np.round(np.clip(self.pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_radiograph(
    source: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None, warn: bool = True
) -> Radiograph:
    """Decode ``source`` into a :class:`Radiograph` or raise ``ImageReadError`` saying why.

    Paths must exist and carry a supported suffix (or none); bytes and file objects (dashboard
    uploads, never written to disk) are identified by content alone. ``name`` labels the image
    in messages and metadata. Colour photographs decode but warn ``NotARadiographWarning``;
    with ``warn=False`` the caller reports ``metadata["colour_photo"]`` itself
    (``colour_photo_message``), which needs no process-global warning filters (threads).
    """
    data, label, display_name = _read_source(source, name)
    fmt = next((f for magic, f in _MAGIC.items() if data.startswith(magic)), None)
    if fmt is None and data[128:132] == b"DICM":
        fmt = "dicom"
    if fmt is None:
        raise ImageReadError(_not_an_image(data, label))
    pixels, meta = _decode_dicom(data, label) if fmt == "dicom" else _decode_pil(data, fmt, label)
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    meta = {
        "name": display_name,
        "format": fmt,
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        **meta,
    }
    if meta["colour_photo"] and warn:
        warnings.warn(colour_photo_message(label), NotARadiographWarning, stacklevel=2)
    return Radiograph(pixels=pixels, metadata=meta)


def colour_photo_message(label: str) -> str:
    """What to tell a user whose image is a colour photograph (warning text and dashboard note)."""
    return (
        f"{label} looks like a colour photograph, not a radiograph: a prediction on it means "
        "nothing. Use the X-ray image itself (PNG, JPEG or DICOM)."
    )


def looks_like_colour_photo(rgb: np.ndarray) -> bool:
    """True if an HxWx3 uint8 image has real colour (a photo), False if it is near-gray RGB."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an HxWx3 array, got shape {rgb.shape}")
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))  # ~250k pixels suffice
    sample = rgb[::step, ::step, :3].astype(np.int16)
    chroma = sample.max(axis=-1) - sample.min(axis=-1)
    return bool(np.mean(chroma > _CHROMA_LEVELS) > _COLOURFUL_FRACTION)


def _read_source(source: Any, name: str | None) -> tuple[bytes, str, str]:
    """Return (content, label for messages, name for metadata); refuse what cannot be read."""
    suffix = ""
    if isinstance(source, bytes | bytearray | memoryview):
        data, label, display = bytes(source), name or "the uploaded image", name or "upload"
    elif hasattr(source, "read"):
        stream_name = str(getattr(source, "name", "") or "")
        label = name or stream_name or "the uploaded image"
        display = name or Path(stream_name).name or "upload"
        data = source.read()
        if not isinstance(data, bytes | bytearray):
            raise ImageReadError(f"{label}: the file was opened in text mode; open it with 'rb'")
        data = bytes(data)
    else:
        path = Path(source)
        label, display, suffix = name or str(path), name or path.name, path.suffix.lower()
        if path.is_dir():
            raise ImageReadError(f"{label} is a directory, not an image file: pass one image file")
        if suffix and suffix not in SUPPORTED_SUFFIXES:
            raise ImageReadError(
                f"{label}: unsupported file type '{path.suffix}'; neXt-Ray reads "
                f"{', '.join(SUPPORTED_SUFFIXES)}: {_FIX}"
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageReadError(
                f"{label}: no such file; check the path (relative paths start at {os.getcwd()})"
            ) from exc
        except OSError as exc:
            raise ImageReadError(f"{label} cannot be read ({exc.strerror}); check it") from exc
    if not data:
        raise ImageReadError(f"{label} is an empty file (0 bytes); copy, export or upload it again")
    if suffix in (".dcm", ".dicom") and data[128:132] != b"DICM":
        raise ImageReadError(
            f"{label} is named like DICOM but lacks the 'DICM' marker at byte 128: it is not a "
            "DICOM file, or a raw dataset without a file header; re-export it from the viewer"
        )
    return data, label, display


def _not_an_image(data: bytes, label: str) -> str:
    """Say what the content is, as far as we can tell, and what to send instead."""
    what = next((desc for magic, desc in _OTHER.items() if data.startswith(magic)), None)
    if what is None:
        head = data[:1024]
        is_text = head.isascii() and b"\x00" not in head
        what = "a text file" if is_text else f"unknown data (it starts {data[:8]!r})"
    return f"{label} is not an image: it looks like {what}, not PNG, JPEG or DICOM; {_FIX}"


def _check_size(width: int, height: int, label: str) -> None:
    """Refuse decompression bombs from the header alone, before any pixel is decoded."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{label} is too large: {width}x{height} = {width * height:,} pixels exceeds the "
            f"limit of {MAX_PIXELS:,} (a possible decompression bomb); downscale it and try again"
        )


def _check_complete(data: bytes, fmt: str, label: str) -> None:
    """Refuse cut-off files even when some library set PIL's LOAD_TRUNCATED_IMAGES globally.

    PIL reports truncation only while that global is False, so check the structure ourselves:
    a PNG must walk chunk by chunk (CRCs included) to IEND; a JPEG needs an end-of-image
    marker after its last start-of-scan (neither can occur inside entropy-coded data).
    """
    if fmt == "jpeg":
        complete = data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0
    else:
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                img.verify()
            complete = True
        except Exception:
            complete = False
    if not complete:
        raise ImageReadError(f"{label} is truncated or corrupt ({fmt.upper()}); {_FIX}")


def _decode_pil(data: bytes, fmt: str, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode PNG/JPEG fully with PIL; 16-bit gray keeps its precision, colour becomes luma."""
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            f"{label} is too large to decode safely ({exc}); downscale it"
        ) from exc
    except Exception as exc:  # PIL's own text for UnidentifiedImageError is a repr of BytesIO
        detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
        raise ImageReadError(
            f"{label} is corrupt: its {fmt.upper()} header cannot be read{detail}; {_FIX}"
        ) from exc
    with img:
        _check_size(img.width, img.height, label)
        _check_complete(data, fmt, label)
        mode = img.mode
        try:
            img.load()
            img = ImageOps.exif_transpose(img)  # phones and some scanners store rotated pixels
        except Exception as exc:
            raise ImageReadError(f"{label} is truncated or corrupt ({exc}); {_FIX}") from exc
    colour, extra = False, {}
    if mode in _SIXTEEN_BIT_MODES:  # 16-bit PNG: scale by the bits the data really uses
        values = np.asarray(img, dtype=np.float32)
        bits, extra = _effective_bits(values, data)
        pixels, bit_depth = values / float(2**bits - 1), 16
    elif mode in ("1", "L", "LA"):
        gray = img.getchannel("L") if mode == "LA" else img.convert("L")  # alpha dropped
        pixels, bit_depth = np.asarray(gray, dtype=np.float32) / 255.0, 1 if mode == "1" else 8
    else:  # RGB, RGBA, P, PA, CMYK, YCbCr: alpha dropped, not composited
        rgb = np.asarray(img.convert("RGBA" if "A" in mode else "RGB"))[..., :3]
        pixels, colour, bit_depth = _luma(rgb) / 255.0, looks_like_colour_photo(rgb), 8
    return pixels, {"bit_depth": bit_depth, "mode": mode, "colour_photo": colour, **extra}


def _effective_bits(values: np.ndarray, data: bytes) -> tuple[int, dict[str, Any]]:
    """How many of a 16-bit PNG's bits hold data: its sBIT chunk if that fits the values, else
    the smallest of 8/10/12/14 bits that holds the largest value (12-bit detector exports, values
    up to 4,095, would otherwise read almost black), else 16."""
    peak = int(values.max()) if values.size else 0
    sbit = _png_sbit(data)
    if sbit is not None and 1 <= sbit < 16 and peak < 2**sbit:
        bits, source = sbit, "sBIT chunk"
    else:
        bits = next((b for b in _DATA_BITS if peak < 2**b), 16)
        source = "value range"
    if bits == 16:
        return 16, {"effective_bits": 16}
    return bits, {"effective_bits": bits, "rescaled_from": source, "stored_max": peak}


def _png_sbit(data: bytes) -> int | None:
    """The gray significant-bits value of a PNG's sBIT chunk (before IDAT), or None."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"sBIT" and length >= 1:
            return data[position + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (PIL's 'L' weights) in float32, without rounding to 8 bits."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _decode_dicom(data: bytes, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one DICOM frame: modality LUT, then VOI LUT or window (else min-max), bone bright."""
    import pydicom  # here, not at the top: it costs ~1 s at every start of every command
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        frames, bits = (
            int(ds.get("NumberOfFrames") or 1),
            int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8),
        )
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except Exception as exc:
        raise ImageReadError(f"{label} is a corrupt DICOM file ({exc}); {_FIX}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            f"{label} is a DICOM file without pixel data (SOP class "
            f"{ds.get('SOPClassUID', 'unknown')}, e.g. a report); export the image itself"
        )
    if frames > 1:
        raise ImageReadError(
            f"{label} is a multi-frame DICOM ({frames} frames); neXt-Ray reads one view per "
            "file: export each frame as its own DICOM or PNG"
        )
    _check_size(cols, rows, label)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and photometric[:3] != "YBR":
        raise ImageReadError(f"{label}: photometric interpretation {photometric} is unsupported")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decodable = syntax is None or not syntax.is_compressed or get_decoder(syntax).is_available
    except NotImplementedError:
        decodable = False
    if not decodable:
        raise ImageReadError(
            f"{label} uses the '{syntax.name}' transfer syntax, which pydicom cannot decode "
            "without an extra decoder: pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg (or export it uncompressed)"
        )
    try:
        raw = ds.pixel_array
        if raw.ndim == 3:  # RGB (pydicom converts YBR to RGB): a secondary capture, maybe a photo
            rgb = np.round(raw / (2**bits - 1) * 255).astype(np.uint8)
            colour, window = looks_like_colour_photo(rgb), "none (colour image)"
            pixels = _luma(rgb) / 255.0
        else:
            colour, (pixels, window) = False, _apply_luts(raw, ds)
    except Exception as exc:  # short pixel data, window width 0, broken LUT, ...
        raise ImageReadError(f"{label}: its pixel data is truncated or corrupt ({exc})") from exc
    inverted = photometric == "MONOCHROME1"  # MONOCHROME1 shows dense tissue dark: flip it
    meta: dict[str, Any] = {
        "bit_depth": bits,
        "mode": photometric,
        "colour_photo": colour,
        "photometric": photometric,
        "window_applied": window,
        "inverted": inverted,
    }
    for key, tag in (("modality", "Modality"), ("body_part", "BodyPartExamined")):
        if ds.get(tag):
            meta[key] = str(ds.get(tag))
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing and all(float(v) > 0 for v in spacing):  # some writers store zeros
        meta["pixel_spacing"] = tuple(float(v) for v in spacing)
    return (1.0 - pixels if inverted else pixels), meta


def _apply_luts(raw: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    """Stored values -> [0, 1] the way a viewer shows them, and a note of the VOI step used."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(raw, ds)  # rescale slope/intercept or modality LUT, if any
    voi = ds.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        lo, hi = 0.0, 2.0 ** int(voi[0].LUTDescriptor[2]) - 1
        window = f"VOI LUT sequence ({voi[0].get('LUTExplanation') or 'item 1'})"
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_windowing(values, ds)
        with np.errstate(over="ignore"):  # output range: the window far below and far above
            lo, hi = apply_windowing(np.array([-1e12, 1e12]), ds)
        centre, width = (
            float(v[0] if isinstance(v, Sequence) else v) for v in (ds.WindowCenter, ds.WindowWidth)
        )
        window = (
            f"window centre {centre:g} / width {width:g} ({ds.get('VOILUTFunction', 'LINEAR')})"
        )
    else:
        out = np.asarray(values, dtype=np.float64)
        lo, hi = float(out.min()), float(out.max())
        window = "none: min-max of the stored values"
    return (out - min(lo, hi)) / (abs(hi - lo) or 1.0), window
