"""Is this decoded image usable as a radiograph? Checks that need no model, in one vocabulary.

Every entry point that answers (predict, explain, evaluate, the dashboard's engine.answer) runs
``check_radiograph`` on the decoded image before the model sees it. A finding is a ``Note``
with a stable ``code`` (for CSV columns and tests) and a message that names the fix:

- ``refuse``: the image is not scored at all (``UnusableImageError``, an ``ImageReadError``);
- ``flag``: scored, but the view does not count in its study's verdict unless the user asks
  (``predict.study_table(..., keep_flagged=True)``); the OOD score adds ``ood`` flags;
- ``info``: scored and counted; the user should know (e.g. 12-bit data rescaled).

Thresholds were set on the 601 FracAtlas validation images (512 px derivative) and their
inversions: the 1st-99th percentile span is at least 0.34 there (``low_contrast`` < 0.15), at
least 172 distinct grey levels (``flat_blocks`` < 32; so is one bright level covering half
the image: a document, while a radiograph's modal level is black air), and the polarity rule
(border median > 0.6 and image median > 0.5) flags none of them and 98.7% of their
inversions. Polarity is only noted, never flipped: a wrong flip would be a silent, confident
error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nextray_core.errors import ImageReadError
from nextray_core.imaging import Radiograph, colour_photo_message

MIN_SIDE = 32  # pixels; MURA's and FracAtlas's smallest views are hundreds of pixels wide
BLANK_SPAN = 0.02  # 1st-99th percentile span below ~5 grey levels of 255: nothing to read
LOW_CONTRAST_SPAN = 0.15
MIN_GREY_LEVELS = 32
BRIGHT_FLAT_FRACTION = 0.5  # radiographs' modal level is black air (up to 69% of FracAtlas val)
INVERTED_BORDER = 0.6
INVERTED_MEDIAN = 0.5
_BORDER = 0.06  # the outer 6% of the shorter side is the frame whose median tells polarity

SEVERITIES: tuple[str, ...] = ("refuse", "flag", "info")
# code -> severity: the one vocabulary the CLI's columns and the dashboard's notes share
CODES: dict[str, str] = {
    "too_small": "refuse",
    "blank": "refuse",
    "low_contrast": "flag",
    "flat_blocks": "flag",
    "inverted": "flag",
    "colour_photo": "flag",
    "ood": "flag",
    "rescaled": "info",
}


@dataclass(frozen=True)
class Note:
    """One finding about one image: ``code`` from ``CODES`` and a message naming the fix."""

    code: str
    message: str

    @property
    def severity(self) -> str:
        return CODES[self.code]

    @property
    def excludes(self) -> bool:
        """True if the view should be left out of its study's verdict by default."""
        return self.severity == "flag"


class UnusableImageError(ImageReadError):
    """The image decoded but cannot be read as a radiograph (``code`` says why)."""

    def __init__(self, note: Note) -> None:
        super().__init__(note.message)
        self.code = note.code


def check_radiograph(radiograph: Radiograph, *, refuse: bool = True) -> tuple[Note, ...]:
    """The notes for one decoded image; raises ``UnusableImageError`` for a refusal.

    ``refuse=False`` returns refusals as notes instead (for reports that list everything).
    """
    meta = radiograph.metadata
    label = meta.get("name") or "the image"
    notes = [_size_note(radiograph.pixels, label)]
    if notes[0] is None:
        notes = [*_pixel_notes(radiograph.pixels, label)]
    if meta.get("colour_photo"):  # first: what it is; a photo's polarity means nothing
        notes = [n for n in notes if n is None or n.code != "inverted"]
        notes.insert(0, Note("colour_photo", colour_photo_message(label)))
    if meta.get("rescaled_from"):
        bits = meta["effective_bits"]
        notes.append(
            Note(
                "rescaled",
                f"{label}: a 16-bit PNG holding {bits}-bit data (largest value "
                f"{meta['stored_max']:,}, told by its {meta['rescaled_from']}); read as "
                f"{bits}-bit, i.e. divided by {2**bits - 1:,} rather than 65,535",
            )
        )
    notes = [note for note in notes if note is not None]
    refusals = [note for note in notes if note.severity == "refuse"]
    if refusals and refuse:
        raise UnusableImageError(refusals[0])
    return tuple(notes)


def ood_note(label: str, score: float, threshold: float) -> Note:
    """The ``ood`` flag in the shared vocabulary (the score comes from ``nextray_core.ood``)."""
    return Note(
        "ood",
        f"{label} is unlike the images the model was trained on (OOD score {score:.1f} > "
        f"{threshold:.1f}): the probability is unreliable; check that it is a radiograph of a "
        "kind the model card lists",
    )


def excluded(notes: Iterable[Note]) -> list[Note]:
    """The notes that leave a view out of its study's verdict."""
    return [note for note in notes if note.excludes]


def codes(notes: Iterable[Note], *, severity: str | None = None) -> str:
    """``;``-joined codes (a CSV cell), optionally only those of one severity."""
    return ";".join(n.code for n in notes if severity is None or n.severity == severity)


def messages(notes: Iterable[Note]) -> str:
    """The notes' messages as one text, in order."""
    return " | ".join(note.message for note in notes)


def _size_note(pixels: np.ndarray, label: str) -> Note | None:
    height, width = pixels.shape
    if min(height, width) >= MIN_SIDE:
        return None
    return Note(
        "too_small",
        f"{label} is only {width}x{height} pixels: too small to be a radiograph (at least "
        f"{MIN_SIDE} px a side); export the image at its full size",
    )


def _sample(pixels: np.ndarray, target: int = 512) -> np.ndarray:
    """A strided copy of at most ~target x target pixels: the statistics need no more."""
    step = max(1, int(np.ceil(max(pixels.shape) / target)))
    return pixels[::step, ::step]


def _pixel_notes(pixels: np.ndarray, label: str) -> list[Note]:
    x = _sample(pixels)
    low, median, high = (float(v) for v in np.percentile(x, [1, 50, 99]))
    span = high - low
    if span < BLANK_SPAN:
        return [
            Note(
                "blank",
                f"{label} is blank: nearly every pixel has the same grey value "
                f"({round(median * 255)} of 255); there is nothing to read. Export the "
                "radiograph again (check the window / level and that the right file was sent)",
            )
        ]
    if span < LOW_CONTRAST_SPAN:
        return [
            Note(
                "low_contrast",
                f"{label} has very little contrast (1st-99th percentile span {span:.0%} of the "
                "grey range): over- or under-exposed, or exported with a narrow window; "
                "the probability is unreliable. Re-export it with the viewer's default window",
            )
        ]
    grey = np.round(x * 255).astype(np.int64)
    counts = np.bincount(grey.ravel(), minlength=256)
    levels, modal = int((counts > 0).sum()), int(counts.argmax())
    if levels < MIN_GREY_LEVELS or (
        counts[modal] > BRIGHT_FLAT_FRACTION * grey.size and modal > 127
    ):
        what = (
            f"only {levels} distinct grey levels"
            if levels < MIN_GREY_LEVELS
            else (
                f"a flat bright background ({counts[modal] / grey.size:.0%} of the pixels at one "
                "grey level)"
            )
        )
        return [
            Note(
                "flat_blocks",
                f"{label} has {what}: a document, a drawing, a screenshot or flat colour "
                "blocks rather than a radiograph; the probability means nothing",
            )
        ]
    border = _border_median(x)
    if border > INVERTED_BORDER and median > INVERTED_MEDIAN:
        return [
            Note(
                "inverted",
                f"{label} looks inverted (bright background, dark bone; border median "
                f"{border:.2f}): a negative, or a MONOCHROME1 image saved without its "
                "photometric tag. Invert it (bone bright) and try again; it was not flipped",
            )
        ]
    return []


def _border_median(x: np.ndarray) -> float:
    band = max(1, int(_BORDER * min(x.shape)))
    frame = np.concatenate(
        [x[:band].ravel(), x[-band:].ravel(), x[:, :band].ravel(), x[:, -band:].ravel()]
    )
    return float(np.median(frame))
