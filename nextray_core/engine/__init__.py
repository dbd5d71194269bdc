"""The inference engine: probability, CAM and pooled features through the fastest checked path.

``load_engine(checkpoint)`` is what predict, evaluate, explain and the dashboard use.
"""

from nextray_core.engine.answer import Answer, answer_radiograph, answers_table
from nextray_core.engine.calibration import add_calibration, calibration_tensors
from nextray_core.engine.engine import (
    BACKEND_CHOICES,
    CALIBRATION_IMAGES,
    CALIBRATION_LABELS,
    InferenceEngine,
    build_engine,
    cache_root,
    load_engine,
)
from nextray_core.engine.guard import LIMITS, GuardResult, compare
from nextray_core.options import BACKENDS

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "CALIBRATION_IMAGES",
    "CALIBRATION_LABELS",
    "LIMITS",
    "Answer",
    "GuardResult",
    "InferenceEngine",
    "add_calibration",
    "answer_radiograph",
    "answers_table",
    "build_engine",
    "cache_root",
    "calibration_tensors",
    "compare",
    "load_engine",
]
