"""neXt-Ray core: read radiographs, index datasets, build, train, evaluate and explain the model.

The public API, nothing else. Names are imported lazily so that ``nextray --help`` and
light-weight tools do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "read_radiograph": "nextray_core.imaging",
    "Radiograph": "nextray_core.imaging",
    "check_radiograph": "nextray_core.sanity",
    "INDEX_COLUMNS": "nextray_core.index",
    "load_dataset": "nextray_core.datasets",
    "detect_dataset_kind": "nextray_core.datasets",
    "Preprocessing": "nextray_core.transforms",
    "eval_transform": "nextray_core.transforms",
    "train_transform": "nextray_core.transforms",
    "build_model": "nextray_core.model",
    "ModelCard": "nextray_core.checkpoint",
    "save_checkpoint": "nextray_core.checkpoint",
    "load_checkpoint": "nextray_core.checkpoint",
    "release": "nextray_core.release",
    "ReleasePolicy": "nextray_core.release",
    "predict_index": "nextray_core.predict",
    "predict_files": "nextray_core.predict",
    "study_table": "nextray_core.metrics",
    "fit_ood_model": "nextray_core.ood",
    "metric_table": "nextray_core.metrics",
    "read_run": "nextray_core.runs",
    "write_run": "nextray_core.runs",
    "NextRayError": "nextray_core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nextray_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
