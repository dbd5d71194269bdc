"""Explanations and trust: class activation maps, overlays, faithfulness and localisation.

``predict_with_cam`` is the fast path (probability and map from one forward pass, no hooks);
``explain_batch`` adds pytorch-grad-cam's methods; ``overlay`` draws a map over the original
radiograph; ``faithfulness`` and ``localisation_scores`` check the maps. The OOD flag lives in
``nextray_core.ood``.
"""

from nextray_core.explain.cam import CamResult, display_maps, predict_with_cam
from nextray_core.explain.methods import (
    METHODS,
    TARGETS,
    Explanation,
    LogitTarget,
    explain_batch,
    model_lock,
)
from nextray_core.explain.overlay import available_colormaps, normalise_map, overlay, upsample_map
from nextray_core.explain.trust import (
    FRACTIONS,
    boxes_by_image,
    faithfulness,
    localisation_frame,
    localisation_report,
    localisation_scores,
)

__all__ = [
    "FRACTIONS",
    "METHODS",
    "TARGETS",
    "CamResult",
    "Explanation",
    "LogitTarget",
    "available_colormaps",
    "boxes_by_image",
    "display_maps",
    "explain_batch",
    "faithfulness",
    "localisation_frame",
    "localisation_report",
    "localisation_scores",
    "model_lock",
    "normalise_map",
    "overlay",
    "predict_with_cam",
    "upsample_map",
]
