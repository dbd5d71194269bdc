"""Predict page: sanity notes and OOD flags are shown, and flagged views leave the verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_dashboard import _no_demo, app, no_exception, synthetic_folders  # noqa: F401

from nextray_core.datasets import load_dataset
from nextray_core.engine import answer_radiograph, load_engine
from nextray_core.imaging import read_radiograph
from nextray_core.ood_set import flat_colour_blocks, png

FRACATLAS_MINI = Path(__file__).resolve().parent / "data" / "fracatlas_mini"


@pytest.fixture(scope="module")
def uploads() -> dict[str, tuple[str, bytes, str]]:
    """A view the core finds nothing wrong with (the random test model's OOD statistics flag
    some real ones), its negative, colour blocks and an all-black image."""
    index = load_dataset("fracatlas", FRACATLAS_MINI).reset_index(drop=True)
    engine = load_engine(synthetic_folders()[0], backend="torch-fp32")
    path = next(Path(p) for p in index["image_path"] if not answer_radiograph(engine, p).findings)
    pixels = read_radiograph(path).pixels
    negative = png(np.round((1 - pixels) * 255).astype(np.uint8))
    blocks = flat_colour_blocks(np.random.default_rng(0))
    return {
        "good": (path.name, path.read_bytes(), "image/jpeg"),
        "inverted": ("negative.png", negative, "image/png"),
        "blocks": ("blocks.png", blocks, "image/png"),
        "blank": ("black.png", png(np.zeros((64, 64), np.uint8)), "image/png"),
    }


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_flagged_views_are_noted_and_left_out_of_the_verdict_unless_kept(uploads):
    checkpoint, run, _ = synthetic_folders()
    at = app("predict", run, checkpoint)
    at.file_uploader[0].set_value([uploads["good"]]).run()
    alone = float(metrics(at)["Study probability (mean of views)"])
    files = [uploads[k] for k in ("good", "inverted", "blocks", "blank")]
    at.file_uploader[0].set_value(files).run()
    no_exception(at)
    (error,) = [e.value for e in at.error]
    assert "black.png" in error and "blank" in error  # refused, not scored
    warnings = " ".join(w.value for w in at.warning)
    assert "negative.png looks inverted" in warnings and "blocks.png" in warnings
    shown = metrics(at)
    assert shown["Views scored"] == "3" and shown["Views used"] == "1"
    assert "inverted x1" in warnings and "flat_blocks x1" in warnings
    assert float(shown["Study probability (mean of views)"]) == pytest.approx(alone, abs=1e-3)

    at.checkbox(key="predict_keep_flagged").check().run()
    scored = [float(m.value) for m in at.metric if m.label.startswith("Probability")]
    kept = metrics(at)
    assert kept["Views used"] == "3"
    assert float(kept["Study probability (mean of views)"]) == pytest.approx(
        np.mean(scored), abs=2e-3
    )


def test_a_study_of_flagged_views_only_has_no_verdict(uploads):
    checkpoint, run, _ = synthetic_folders()
    at = app("predict", run, checkpoint)
    at.file_uploader[0].set_value([uploads["inverted"], uploads["blocks"]]).run()
    no_exception(at)
    shown = metrics(at)
    assert shown["Verdict"] == "no usable view" and shown["Views used"] == "0"
