"""Out-of-distribution flag: is this image unlike the radiographs the model was trained on?

Distance: Mahalanobis distance of the pooled features (``predict_with_cam(...).pooled_features``)
under a probabilistic-PCA model of the training features: the top ``dims`` principal
directions keep their own variances (shrunk a little towards their mean, which keeps the
precision well-conditioned with few images), and everything outside that subspace gets one
shared variance (the mean of the discarded eigenvalues). The residual term matters: images
unlike the training set often differ mostly OUTSIDE the directions in which training images
vary (Wang et al. 2022, ViM). Squared distance = sum_i z_i^2 / l_i + |r|^2 / s^2.

Size: mean (F) + projection (F x dims) + precision (dims) + one scalar; 2048 x 64 floats is
~0.5 MB beside ~230 MB of ResNet-152 weights. Threshold: the ``quantile`` (default 0.99) of the
distances of held-out in-distribution images, so about 1% of ordinary images get flagged.

Into a checkpoint::

    card.extra["ood"] = ood.card_extra()
    save_checkpoint(model, folder, card, extra_tensors=ood.to_tensors())

and back: ``load_ood(extras, card)`` after ``load_checkpoint`` (None if it has no OOD stats).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nextray_core.errors import CheckpointError, ConfigError

KEYS: tuple[str, ...] = ("ood.mean", "ood.projection", "ood.precision", "ood.residual_precision")
SHRINKAGE = 0.1


@dataclass(frozen=True)
class OodModel:
    """Fitted OOD statistics (float32 tensors) and the calibrated distance threshold."""

    mean: torch.Tensor  # F
    projection: torch.Tensor  # F x d, orthonormal columns
    precision: torch.Tensor  # d, 1 / variance along each column
    residual_precision: torch.Tensor  # scalar, 1 / variance outside the subspace
    threshold: float
    info: dict[str, Any]

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances (N) of N x F pooled features, on the features' device."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected N x {self.mean.shape[0]} pooled features, got {tuple(features.shape)}"
            )
        device = features.device
        centred = features.float() - self.mean.to(device)
        z = centred @ self.projection.to(device)
        residual = centred - z @ self.projection.to(device).T
        squared = (z.square() * self.precision.to(device)).sum(1) + residual.square().sum(
            1
        ) * self.residual_precision.to(device)
        return squared.clamp(min=0).sqrt()

    def flags(self, features: torch.Tensor) -> torch.Tensor:
        """True where the image looks out of distribution (distance above the threshold)."""
        return self.score(features) > self.threshold

    depths: ClassVar[tuple[str, ...]] = ("layer4",)  # scores the final pooled features

    def score_depths(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``score`` of ``features["layer4"]`` (the interface ``DepthOod`` shares)."""
        return self.score(features["layer4"])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For ``save_checkpoint(..., extra_tensors=...)``."""
        values = (self.mean, self.projection, self.precision, self.residual_precision)
        return {
            key: value.detach().cpu().float().contiguous()
            for key, value in zip(KEYS, values, strict=True)
        }

    def card_extra(self) -> dict[str, Any]:
        """For ``card.extra['ood']``: the threshold and how it was fitted."""
        return {"threshold": self.threshold, **self.info}

    @classmethod
    def from_tensors(cls, extras: dict[str, torch.Tensor], card_extra: dict[str, Any]) -> OodModel:
        missing = [key for key in KEYS if key not in extras]
        if missing or "threshold" not in card_extra:
            raise CheckpointError(
                "incomplete OOD statistics in the checkpoint (missing "
                f"{missing or ['threshold']}); "
                "re-save it with fit_ood's to_tensors() and card_extra()"
            )
        info = {k: v for k, v in card_extra.items() if k != "threshold"}
        return cls(*(extras[key].float() for key in KEYS), float(card_extra["threshold"]), info)


def collect_features(model: nn.Module, batches: Iterable[Any]) -> torch.Tensor:
    """N x F pooled features (CPU) for every batch, e.g. a DataLoader over RadiographDataset
    (items whose first element is the B x 3 x S x S input) - what fit_ood needs."""
    from nextray_core.explain.cam import predict_with_cam

    parts = []
    for item in batches:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        parts.append(predict_with_cam(model, batch).pooled_features.cpu())
    if not parts:
        raise ConfigError("no images to collect features from")
    return torch.cat(parts)


def load_ood(extras: dict[str, torch.Tensor], card: Any) -> OodModel | DepthOod | None:
    """The OOD model stored in a checkpoint (``load_checkpoint``'s extras and card), or None:
    a ``DepthOod`` when the card lists ``depths``, else a single (layer4) ``OodModel``."""
    card_extra = (getattr(card, "extra", None) or {}).get("ood")
    if card_extra is not None and "depths" in card_extra:
        return DepthOod.from_tensors(extras, card_extra)
    if card_extra is None and not any(key in extras for key in KEYS):
        return None
    return OodModel.from_tensors(extras, card_extra or {})


def fit_ood(
    features: torch.Tensor,
    *,
    dims: int = 64,
    calibration: torch.Tensor | None = None,
    quantile: float = 0.99,
    holdout: float = 0.2,
    seed: int = 0,
) -> OodModel:
    """Fit on N x F in-distribution features; set the threshold on held-out ones.

    ``calibration``: features of other in-distribution images (e.g. the validation split) for
    the threshold; if None, a random ``holdout`` fraction of ``features`` is set aside for it
    and the statistics are fitted on the rest. ``dims`` is capped at (fitting images - 2).
    """
    features = features.detach().double().cpu()
    if features.ndim != 2:
        raise ValueError(f"expected N x F features, got {tuple(features.shape)}")
    if not 0.5 <= quantile < 1.0:
        raise ConfigError(f"quantile must be in [0.5, 1), got {quantile}")
    if calibration is None:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        cut = round(len(features) * holdout)
        if cut < 1 or len(features) - cut < 3:
            raise ConfigError(f"too few images ({len(features)}) to fit and calibrate OOD stats")
        calibration, features = features[order[:cut]], features[order[cut:]]
    calibration = calibration.detach().double().cpu()
    count, width = features.shape
    if count < 3:
        raise ConfigError(f"need at least 3 images to fit OOD statistics, got {count}")
    dims = max(1, min(dims, count - 2, width - 1))

    mean = features.mean(0)
    centred = features - mean
    if count > width:  # eigen-decompose the F x F covariance: cheaper for many images
        eigen, vectors = torch.linalg.eigh(centred.T @ centred / (count - 1))
        eigen, directions = eigen.flip(0).clamp(min=0), vectors.flip(1).T
    else:
        _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
        eigen = singular.square() / (count - 1)
    kept = eigen[:dims]
    kept = (1 - SHRINKAGE) * kept + SHRINKAGE * kept.mean()
    total = centred.square().sum() / (count - 1)
    residual_var = (total - eigen[:dims].sum()).clamp(min=0) / (width - dims)
    floor = 1e-6 * float(kept.mean()) + 1e-12
    model = OodModel(
        mean=mean.float(),
        projection=directions[:dims].T.contiguous().float(),
        precision=(1.0 / kept.clamp(min=floor)).float(),
        residual_precision=torch.tensor(1.0 / max(float(residual_var), floor)).float(),
        threshold=float("inf"),
        info={},
    )
    distances = model.score(calibration.float())
    threshold = float(torch.quantile(distances.double(), quantile))
    info = {
        "distance": "ppca-mahalanobis",
        "quantile": quantile,
        "dims": dims,
        "features": width,
        "fit_images": count,
        "calibration_images": len(calibration),
    }
    return OodModel(
        model.mean, model.projection, model.precision, model.residual_precision, threshold, info
    )


# ---------------------------------------------------------------------------------------------
# Several depths. Measured on the demo checkpoint (docs/ood.md): the final pooled features
# alone miss flat colour blocks, CT/MR slices, a skull-like and most inverted films; layer2's
# pooled features catch them, and layer4 keeps the semantic view. layer2 costs ~25% of a
# ResNet-152 forward pass (stem + 11 of 50 blocks) beside the engine's own pass.
DEPTHS: tuple[str, ...] = ("layer2", "layer4")
RESNET_DEPTHS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


def depth_features(
    model: nn.Module, batch: torch.Tensor, depths: Iterable[str] = DEPTHS
) -> dict[str, torch.Tensor]:
    """Spatially pooled (mean) feature maps B x C at each ResNet stage in ``depths``, in one
    fp32 pass that stops at the deepest one asked for (no hooks: safe on a shared model)."""
    from nextray_core.explain.cam import as_model_input, check_explainable

    check_explainable(model)
    wanted = set(depths)
    if not hasattr(model, "layer4"):  # a DenseNet: its pooled features, what the head sees
        if wanted != {"layer4"}:
            raise ConfigError(
                f"a DenseNet has OOD statistics on its pooled features only (depth 'layer4'), "
                f"not {sorted(wanted)}"
            )
        from nextray_core.explain.cam import predict_with_cam

        with torch.no_grad():
            return {"layer4": predict_with_cam(model, batch).pooled_features.float()}
    unknown = wanted - set(RESNET_DEPTHS)
    if unknown:
        raise ConfigError(
            f"OOD depths must be ResNet stages {RESNET_DEPTHS}, got {sorted(unknown)}"
        )
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        x = as_model_input(model, batch)
        for stage in (model.conv1, model.bn1, model.relu, model.maxpool):
            x = stage.forward(x)
        for name in RESNET_DEPTHS:
            x = getattr(model, name).forward(x)
            if name in wanted:
                out[name] = x.float().mean(dim=(2, 3))
            if len(out) == len(wanted):
                break
    return out


@dataclass(frozen=True)
class DepthOod:
    """One PPCA-Mahalanobis model per depth; the score is the largest ratio of a depth's
    distance to that depth's own threshold, and ``threshold`` is that score's quantile on the
    calibration images (so "score > threshold" flags about 1 - quantile of ordinary ones)."""

    parts: dict[str, OodModel]
    threshold: float
    info: dict[str, Any]

    @property
    def depths(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def score_depths(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """N scores from ``depth_features``-style features (every depth in ``depths``)."""
        ratios = [part.score(features[d]) / part.threshold for d, part in self.parts.items()]
        return torch.stack(ratios).amax(0)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For ``save_checkpoint(..., extra_tensors=...)``: ``ood.<depth>.<mean|...>``."""
        return {
            f"ood.{depth}.{key.removeprefix('ood.')}": value
            for depth, part in self.parts.items()
            for key, value in part.to_tensors().items()
        }

    def card_extra(self) -> dict[str, Any]:
        """For ``card.extra['ood']``: the threshold, each depth's fit, how it was calibrated."""
        depths = {depth: part.card_extra() for depth, part in self.parts.items()}
        return {"threshold": self.threshold, **self.info, "depths": depths}

    @classmethod
    def from_tensors(cls, extras: dict[str, torch.Tensor], card_extra: dict[str, Any]) -> DepthOod:
        parts = {}
        for depth, part_extra in card_extra["depths"].items():
            prefix = f"ood.{depth}."
            tensors = {
                f"ood.{k.removeprefix(prefix)}": v
                for k, v in extras.items()
                if k.startswith(prefix)
            }
            parts[depth] = OodModel.from_tensors(tensors, part_extra)
        if "threshold" not in card_extra or not parts:
            raise CheckpointError(
                "incomplete OOD statistics in the checkpoint (no threshold or no depths); "
                "re-save it with fit_ood_model's to_tensors() and card_extra()"
            )
        info = {k: v for k, v in card_extra.items() if k not in ("threshold", "depths")}
        return cls(parts, float(card_extra["threshold"]), info)


def collect_depth_features(
    model: nn.Module, batches: Iterable[Any], depths: Iterable[str] = DEPTHS
) -> dict[str, torch.Tensor]:
    """``depth_features`` for every batch (items whose first element is B x 3 x S x S), on CPU."""
    depths = tuple(depths)
    parts: dict[str, list[torch.Tensor]] = {d: [] for d in depths}
    for item in batches:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        for depth, value in depth_features(model, batch, depths).items():
            parts[depth].append(value.cpu())
    if not parts[depths[0]]:
        raise ConfigError("no images to collect features from")
    return {depth: torch.cat(values) for depth, values in parts.items()}


def fit_depth_ood(
    fit: dict[str, torch.Tensor],
    calibration: dict[str, torch.Tensor],
    *,
    dims: int = 64,
    quantile: float = 0.99,
) -> DepthOod:
    """Fit one PPCA model per depth on ``fit`` features (the train split) and calibrate every
    threshold on ``calibration`` features (the validation split) at ``quantile``."""
    parts = {
        depth: fit_ood(fit[depth], dims=dims, calibration=calibration[depth], quantile=quantile)
        for depth in fit
    }
    model = DepthOod(parts, float("inf"), {})
    scores = model.score_depths({d: calibration[d].float() for d in parts})
    info = {
        "distance": "max over depths of ppca-mahalanobis / its threshold",
        "quantile": quantile,
        "fit_images": len(next(iter(fit.values()))),
        "calibration_images": len(scores),
    }
    return DepthOod(parts, float(torch.quantile(scores.double(), quantile)), info)


def ood_depths(model: nn.Module, depths: Iterable[str] = DEPTHS) -> tuple[str, ...]:
    """The depths a model's OOD statistics use: ``depths`` for a ResNet; for a DenseNet (no
    stages) its pooled features alone, named 'layer4' as the engine names every model's pooled
    features."""
    return tuple(depths) if hasattr(model, "layer4") else ("layer4",)


def fit_ood_model(
    model: nn.Module,
    train_batches: Iterable[Any],
    calibration_batches: Iterable[Any],
    *,
    depths: Iterable[str] = DEPTHS,
    dims: int = 64,
    quantile: float = 0.99,
) -> DepthOod:
    """THE entry point for a checkpoint's OOD statistics (the release step calls it): features
    of the train split's images (e.g. a DataLoader over RadiographDataset with the eval
    transform) fit, the validation split's calibrate. Store the result with
    ``card.extra["ood"] = ood.card_extra()`` and ``extra_tensors=ood.to_tensors()``.
    A DenseNet gets one depth (``ood_depths``)."""
    depths = ood_depths(model, depths)
    return fit_depth_ood(
        collect_depth_features(model, train_batches, depths),
        collect_depth_features(model, calibration_batches, depths),
        dims=dims,
        quantile=quantile,
    )
