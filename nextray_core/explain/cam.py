"""Class activation maps for a one-logit model, computed in the same forward pass as the logit.

Our head is global average pooling followed by ``Linear(F, 1)`` (after a dropout that is the
identity in eval mode), so with final feature maps ``A_k`` (h x w) and weights ``w_k``

    logit = b + sum_k w_k * mean_ij A_k[i, j] = b + mean_ij cam[i, j],  cam = sum_k w_k * A_k.

``cam`` is the classic CAM; it is in logit units and its spatial mean plus the bias IS the
logit. Grad-CAM's channel weights for this head are d logit / d A_k[i, j] averaged over the
cells = w_k / (h*w), a constant, so Grad-CAM = cam / (h*w) exactly: no backward pass is needed.

Bias: left OUT of the map. It is spatially uniform, carries no location, and adding it would
shift which cells survive the ReLU used for display; without it the map is exactly proportional
to Grad-CAM and "evidence for normal" is exactly ``-cam``. The identity above lets anyone put
it back (``output_linear(model).bias``).

The stages are run explicitly (ResNet: conv1 .. layer4; DenseNet: features + ReLU) through
each stage's ``.forward``: no hooks are registered and none registered by others on those
stages fire, so concurrent calls on one shared model are safe without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from nextray_core.model import output_linear


@dataclass(frozen=True)
class CamResult:
    """One forward pass: logits (B), probabilities (B), cams_abnormal (B x h x w, logit units,
    before any ReLU; normal evidence = ``-cams_abnormal``), pooled_features (B x F).

    All float32, on the model's device.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    cams_abnormal: torch.Tensor
    pooled_features: torch.Tensor

    @classmethod
    def from_outputs(
        cls, logits: torch.Tensor, cams: torch.Tensor, pooled: torch.Tensor
    ) -> CamResult:
        """From ``head_outputs``' tensors (any float dtype, any backend), as float32."""
        logits = logits.float()
        return cls(logits, torch.sigmoid(logits), cams.float(), pooled.float())


def check_explainable(model: nn.Module) -> None:
    """Refuse models whose maps would be wrong: training mode, or a head that is not GAP+Linear."""
    if not isinstance(model, (models.ResNet, models.DenseNet)):
        raise TypeError(
            f"class activation maps need a torchvision ResNet or DenseNet from "
            f"nextray_core.model.build_model, got {type(model).__name__}"
        )
    if model.training:
        raise ValueError("call model.eval() before explaining: dropout and batch statistics")
    head = model.classifier if isinstance(model, models.DenseNet) else model.fc
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    linear = layers[-1]
    if not (
        isinstance(linear, nn.Linear)
        and linear.out_features == 1
        and all(isinstance(m, nn.Dropout) for m in layers[:-1])
    ):
        raise TypeError("the head must be [Dropout ->] Linear(F, 1), as build_model makes it")


def feature_stages(model: nn.Module) -> list[nn.Module]:
    """The modules that turn an image into the final (post-ReLU) feature maps, in order."""
    if isinstance(model, models.DenseNet):
        return [model.features, nn.ReLU()]
    stem = [model.conv1, model.bn1, model.relu, model.maxpool]
    return [*stem, model.layer1, model.layer2, model.layer3, model.layer4]


def feature_maps(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The final (post-ReLU) feature maps B x F x h x w that the head pools."""
    x = batch
    for stage in feature_stages(model):
        x = stage.forward(x)
    return x


def head_logits(
    model: nn.Module, maps: torch.Tensor, *, detach_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits B, pooled features B x F) from the feature maps, as the model's head does."""
    pooled = torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)
    linear = output_linear(model)
    weight, bias = linear.weight, linear.bias
    if detach_weights:
        weight, bias = weight.detach(), bias.detach() if bias is not None else None
    return F.linear(pooled, weight, bias)[:, 0], pooled


def pooled_logits(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """Logits B from pooled features B x F, in float32 as ``head_outputs`` computes them: what
    lets a pass that already pooled the final maps (the OOD features) skip a second forward."""
    linear = output_linear(model)
    bias = None if linear.bias is None else linear.bias.float()
    with torch.no_grad():
        return F.linear(pooled.float().to(linear.weight.device), linear.weight.float(), bias)[:, 0]


def as_model_input(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x S x S batch, got {tuple(batch.shape)}")
    param = next(model.parameters())
    return batch.to(device=param.device, dtype=param.dtype)


def predict_with_cam(model: nn.Module, batch: torch.Tensor) -> CamResult:
    """Probabilities and abnormal-evidence CAMs for a preprocessed batch, in one forward pass."""
    check_explainable(model)
    with torch.no_grad():
        maps = feature_maps(model, as_model_input(model, batch))
        return CamResult.from_outputs(*head_outputs(output_linear(model), maps))


def head_outputs(
    linear: nn.Linear, maps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits B, CAMs B x h x w, pooled features B x F) from final feature maps; the CAM and
    the logit in float32 whatever the maps' dtype. Plain tensors, so that torch.compile and the
    ONNX exporter can take it as part of a module's forward."""
    maps = maps.float()
    pooled = maps.mean(dim=(2, 3))
    weight = linear.weight.float()
    bias = None if linear.bias is None else linear.bias.float()
    cams = torch.einsum("f,bfhw->bhw", weight[0], maps)
    return F.linear(pooled, weight, bias)[:, 0], cams, pooled


def display_maps(cams: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """B x h x w evidence (logit units) -> B x H x W in [0, 1]: ReLU, bilinear, divided by max.

    Scaling by the maximum (not min-max) keeps "no evidence" at 0; an image with no positive
    evidence gets an all-zero map.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    up = F.interpolate(
        cams.clamp(min=0).unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]
    peak = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, up / peak.clamp(min=1e-12), torch.zeros_like(up))
