"""One radiograph in, everything a viewer shows out: probability, map, OOD verdict, notes.

This is what the dashboard's Predict, Errors and Teaching pages call (through their caches),
so the pages hold no model logic. Reading is warning-free (the colour-photo note comes from the
image's metadata), which keeps concurrent dashboard sessions from racing on the global
``warnings`` filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from nextray_core.engine.engine import InferenceEngine
from nextray_core.imaging import read_radiograph
from nextray_core.sanity import Note, check_radiograph, codes, excluded, ood_note
from nextray_core.transforms import model_input


@dataclass(frozen=True)
class Answer:
    """The model's answer for one radiograph; ``pixels`` is the whole decoded image (uint8)."""

    name: str
    probability: float
    pixels: np.ndarray
    cam: np.ndarray  # S x S in [0, 1]: ReLU'd evidence for ``target``, scaled by its maximum
    method: str
    target: str
    backend: str
    ood_distance: float | None = None
    ood_flag: bool = False
    ood_threshold: float | None = None
    notes: tuple[str, ...] = ()  # the findings' messages, in order
    metadata: dict = field(default_factory=dict)
    findings: tuple[Note, ...] = ()  # sanity checks and the OOD flag, in sanity's vocabulary

    @property
    def flagged(self) -> bool:
        """True if this view should be left out of its study's verdict by default."""
        return any(note.excludes for note in self.findings)


def answer_radiograph(
    engine: InferenceEngine,
    source: str | Path | bytes | BinaryIO,
    name: str | None = None,
    *,
    method: str | None = None,
    target: str = "abnormal",
) -> Answer:
    """Read ``source`` and answer it; raises ImageReadError for a bad file and
    ``sanity.UnusableImageError`` for one that decodes but cannot be read (blank, 1x1, ...).

    ``method=None``: the map method the checkpoint's card names (chosen by measured
    localisation on its validation split), else ``cam``.
    ``method='cam'`` runs through the engine's fast backend; pytorch-grad-cam's methods need
    gradients or hooks and run on the fp32 model (``InferenceEngine.explain``).
    """
    method = method or map_method(engine.card)
    radiograph = read_radiograph(source, name=name, warn=False)
    label = radiograph.metadata["name"]
    findings = list(check_radiograph(radiograph))
    pixels = radiograph.to_uint8()
    batch = model_input(pixels, engine.card.prep)[None]
    explained = engine.explain(batch, method, target)
    distance, flag, limit = None, False, None
    if engine.ood is not None:
        distance, limit = float(engine.ood_score(batch, explained)[0]), engine.ood.threshold
        flag = distance > limit  # as OodModel.flags, without scoring twice
        if flag:
            findings.append(ood_note(label, distance, limit))
    return Answer(
        name=label,
        probability=float(explained.probabilities[0]),
        pixels=pixels,
        cam=explained.maps[0],
        method=method,
        target=target,
        backend=engine.backend_name if method == "cam" else "torch-fp32",
        ood_distance=distance,
        ood_flag=flag,
        ood_threshold=limit,
        notes=tuple(note.message for note in findings),
        metadata=dict(radiograph.metadata),
        findings=tuple(findings),
    )


def answers_table(
    answers: Sequence[Answer], *, study_id: str = "uploaded study", region: str = "unknown"
) -> pd.DataFrame:
    """The views of one study as image rows (index columns, probability, flags) for
    ``predict.study_table``, which leaves flagged views out of the study's mean."""
    return pd.DataFrame(
        {
            "image_path": [a.name for a in answers],
            "study_id": study_id,
            "patient_id": study_id,
            "region": region,
            "label": -1,
            "split": "upload",
            "probability": [a.probability for a in answers],
            "flags": [codes(excluded(a.findings)) for a in answers],
        },
        columns=[
            *("image_path", "study_id", "patient_id", "region", "label", "split"),
            *("probability", "flags"),
        ],
    )


def map_method(card) -> str:
    """The map method a checkpoint shows by default: its card's choice, else ``cam``."""
    return str((card.extra or {}).get("map_method") or "cam")
