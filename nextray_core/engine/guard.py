"""The accuracy guard: a fast backend is used only if it answers like the fp32 model.

Limits (issue #7): on real radiographs, the largest change of a probability <= 0.01, the change
of the AUC <= 0.002, and the Pearson correlation of every image's CAM with the fp32 CAM >= 0.95
(the minimum over images, not the mean: one badly distorted map is already a wrong answer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from nextray_core.explain.cam import CamResult

LIMITS: dict[str, float] = {"probability": 0.01, "auc": 0.002, "map_correlation": 0.95}


@dataclass
class GuardResult:
    """How one backend compared with fp32 on ``images`` radiographs."""

    backend: str
    images: int
    max_probability_change: float
    auc_change: float | None
    min_map_correlation: float
    mean_map_correlation: float
    passed: bool
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        auc = "n/a" if self.auc_change is None else f"{self.auc_change:.4f}"
        verdict = "passed" if self.passed else "FAILED (" + "; ".join(self.failures) + ")"
        return (
            f"{self.backend} vs fp32 on {self.images} images: max |dprob| "
            f"{self.max_probability_change:.4f}, |dAUC| {auc}, map correlation min "
            f"{self.min_map_correlation:.3f} (mean {self.mean_map_correlation:.3f}): {verdict}"
        )


def map_correlations(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of two B x h x w map stacks (1.0 where both are flat)."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    flat = norm == 0
    corr = np.where(flat, 1.0, (a * b).sum(axis=1) / np.where(flat, 1.0, norm))
    return corr


def compare(
    backend: str, reference: CamResult, candidate: CamResult, labels: np.ndarray | None = None
) -> GuardResult:
    """Check ``candidate`` against the fp32 ``reference`` on the same images."""
    p_ref = reference.probabilities.cpu().numpy().astype(np.float64)
    p_new = candidate.probabilities.cpu().numpy().astype(np.float64)
    dprob = float(np.abs(p_ref - p_new).max()) if len(p_ref) else 0.0
    dauc = None
    if labels is not None:
        known = np.asarray(labels) >= 0
        y = np.asarray(labels)[known]
        if len(np.unique(y)) == 2:
            from sklearn.metrics import roc_auc_score  # ~1-2 s to import: only when guarding

            dauc = abs(float(roc_auc_score(y, p_ref[known]) - roc_auc_score(y, p_new[known])))
    corr = map_correlations(
        reference.cams_abnormal.cpu().numpy(), candidate.cams_abnormal.cpu().numpy()
    )
    failures = []
    if dprob > LIMITS["probability"]:
        failures.append(f"probability changed by {dprob:.4f} > {LIMITS['probability']}")
    if dauc is not None and dauc > LIMITS["auc"]:
        failures.append(f"AUC changed by {dauc:.4f} > {LIMITS['auc']}")
    if len(corr) and corr.min() < LIMITS["map_correlation"]:
        failures.append(f"map correlation {corr.min():.3f} < {LIMITS['map_correlation']}")
    return GuardResult(
        backend=backend,
        images=len(p_ref),
        max_probability_change=dprob,
        auc_change=dauc,
        min_map_correlation=float(corr.min()) if len(corr) else 1.0,
        mean_map_correlation=float(corr.mean()) if len(corr) else 1.0,
        passed=not failures,
        failures=failures,
    )
