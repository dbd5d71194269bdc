"""All explanation methods behind one call: ``explain_batch(model, batch, method, target)``.

``cam`` (default) is our own forward-only CAM (see cam.py). The others come from
pytorch-grad-cam, with explicit one-logit targets: the library's default target is the argmax
of the output, which for a single logit is always "class 0", i.e. the raw logit whatever the
prediction; we say which evidence we want instead: ``abnormal`` = the logit, ``normal`` = minus
the logit. For this head (GAP + Linear) gradcam, hirescam and xgradcam equal ``cam`` (their
weights are the constant w_k / (h*w)); they are kept as a check and for comparison. eigencam
is class-agnostic: it ignores the target. Its projection is computed here with a thin SVD (the
library's full F x F SVD takes about a second per image; the result is the same) and its sign,
arbitrary in an SVD, is pointed along the summed feature maps so that it does not flip at
random.

How the library is wired, and why it is safe with one shared model:
- it never touches the model's own modules: each call builds a throw-away view whose
  ``target`` module computes the (post-ReLU) feature maps under ``no_grad`` and returns them as
  a fresh leaf that requires grad; the head uses detached weights. The library's hooks sit on
  that per-call module, so they neither see other threads' forwards nor stay behind, and
  backward reaches only the feature maps: parameters get no ``.grad``, ``requires_grad`` and
  eval mode are never changed, and the backward pass costs one linear layer.
- we keep the library's raw map (before its ReLU, min-max scaling and resizing) and display
  every method like ``cam``: ReLU, bilinear to S x S, divide by the max.
- calls are still serialised with a per-model lock: the library is not documented as
  thread-safe, and its methods are heavy (scorecam runs one forward per feature channel and
  holds F x 3 x S x S inputs per image), so running them one at a time bounds memory.
The default ``cam`` path takes no lock.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import nn
from torchvision import models

from nextray_core.errors import ConfigError
from nextray_core.explain.cam import (
    CamResult,
    as_model_input,
    check_explainable,
    display_maps,
    feature_maps,
    feature_stages,
    head_logits,
    predict_with_cam,
)
from nextray_core.options import FINE_METHODS, LIBRARY_METHODS, METHODS, TARGETS

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Explanation:
    """maps B x S x S float32 in [0, 1] (display-ready), probabilities/logits (B), features,
    and raw_maps B x h x w: the method's map at feature resolution before ReLU and scaling, for
    the requested target (cam: logit units; gradcam: cam / (h*w); others: their own units)."""

    maps: np.ndarray
    raw_maps: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    pooled_features: torch.Tensor
    method: str
    target: str


class LogitTarget:
    """pytorch-grad-cam target for one sample's 1-unit output: +logit (abnormal) or -logit."""

    def __init__(self, target: str = "abnormal") -> None:
        self.sign = 1.0 if _check_target(target) == "abnormal" else -1.0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output.reshape(-1)[0]


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    return target


def model_lock(model: nn.Module) -> threading.Lock:
    """The lock that serialises pytorch-grad-cam methods on ``model``."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


class _FeatureTap(nn.Module):
    """Target layer for the library: feature maps as a new leaf, so backward stops here.

    ``fine``: the maps after layer3 instead of the final ones (ResNets only)."""

    def __init__(self, model: nn.Module, fine: bool = False) -> None:
        super().__init__()
        self._model = (model,)  # a tuple: not registered, so .eval()/.zero_grad() skip it
        self.fine = fine

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.fine:
                x = batch
                for stage in feature_stages(self._model[0])[:-1]:  # all but layer4
                    x = stage.forward(x)
                maps = x
            else:
                maps = feature_maps(self._model[0], batch)
        return maps.detach().requires_grad_(True)


def _layer4_detached(model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """layer4 on tapped layer3 maps with its weights detached: no parameter gets a gradient."""
    layer = model.layer4
    state = {k: v.detach() for k, v in layer.state_dict(keep_vars=True).items()}
    return torch.func.functional_call(layer, state, (maps,))


class _LibraryView(nn.Module):
    """What the library sees: input -> tap -> GAP + Linear with detached weights -> B x 1."""

    def __init__(self, model: nn.Module, fine: bool = False) -> None:
        super().__init__()
        self.tap = _FeatureTap(model, fine)
        self._model = (model,)
        # The library reads the device from the first parameter; this one is never used.
        param = next(model.parameters())
        self._device_probe = nn.Parameter(
            torch.empty(0, device=param.device, dtype=param.dtype), requires_grad=False
        )
        self.first_logits: torch.Tensor | None = None
        self.first_pooled: torch.Tensor | None = None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        maps = self.tap(batch)
        if self.tap.fine:
            maps = _layer4_detached(self._model[0], maps)
        logits, pooled = head_logits(self._model[0], maps, detach_weights=True)
        if self.first_pooled is None:  # scorecam calls us again on masked inputs
            self.first_logits, self.first_pooled = logits.detach(), pooled.detach()
        return logits[:, None]


def _first_component(activations: np.ndarray) -> np.ndarray:
    """EigenCAM's map (pytorch_grad_cam.utils.svd_on_activations.get_2d_projection) without its
    full F x F SVD, with the sign (arbitrary in an SVD) pointed along the summed feature maps.
    """
    acts = torch.from_numpy(activations).double()
    batch, channels, height, width = acts.shape
    cells = acts.reshape(batch, channels, -1).transpose(1, 2)  # B x hw x F
    centred = cells - cells.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ vh[:, 0, :, None]  # B x hw x 1
    flip = (projection[..., 0] * cells.sum(2)).sum(1) < 0
    projection = torch.where(flip[:, None, None], -projection, projection)
    return projection.reshape(batch, height, width).float().numpy()


@cache
def _raw_class(name: str) -> type:
    """The library's method class, keeping its unscaled map (``raw_cam``, B x h x w).

    The library returns ReLU'd, min-max scaled, resized maps; we keep its raw map instead and
    normalise every method the same way as ``cam`` (ReLU, bilinear, divide by the max).
    """
    import pytorch_grad_cam

    base = getattr(pytorch_grad_cam, name)

    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
        tracked = self.activations_and_grads
        activations = tracked.activations[0].cpu().numpy()
        grads = tracked.gradients[0].cpu().numpy() if tracked.gradients else None
        if name == "EigenCAM":
            raw = _first_component(activations)
        else:
            raw = self.get_cam_image(
                input_tensor, self.target_layers[0], targets, activations, grads, eigen_smooth
            )
        self.raw_cam = raw
        return [np.zeros((len(input_tensor), 1, 1, 1), dtype=np.float32)]  # result unused

    return type(f"Raw{name}", (base,), {"compute_cam_per_layer": compute_cam_per_layer})


def _library_raw_maps(
    model: nn.Module, batch: torch.Tensor, method: str, target: str, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fine = method in FINE_METHODS
    if fine and not isinstance(model, models.ResNet):
        raise ConfigError(f"{method} needs a ResNet (it maps layer3); use cam or gradcam")
    cls = _raw_class({**LIBRARY_METHODS, **FINE_METHODS}[method])
    maps, logits, pooled = [], [], []
    # scorecam holds F x 3 x S x S masked copies per image: one image at a time.
    chunks = batch.split(1) if method == "scorecam" else [batch]
    # Gradients are needed even if the caller is in no_grad or inference mode.
    with model_lock(model), torch.inference_mode(False), torch.enable_grad():
        for chunk in chunks:
            view = _LibraryView(model, fine).eval()
            with cls(model=view, target_layers=[view.tap]) as explainer:
                explainer.batch_size = batch_size  # scorecam's forward chunk
                explainer(input_tensor=chunk.clone(), targets=[LogitTarget(target)] * len(chunk))
                maps.append(torch.from_numpy(np.asarray(explainer.raw_cam, dtype=np.float32)))
            logits.append(view.first_logits)
            pooled.append(view.first_pooled)
    return torch.cat(maps), torch.cat(logits), torch.cat(pooled)


def explain_batch(
    model: nn.Module,
    batch: torch.Tensor,
    method: str = "cam",
    target: str = "abnormal",
    *,
    batch_size: int = 32,
    cam_pass: Callable[[torch.Tensor], CamResult] | None = None,
) -> Explanation:
    """Display maps (B x S x S in [0, 1], ReLU'd evidence scaled per image) and probabilities.

    ``batch`` is preprocessed (B x 3 x S x S). ``batch_size`` is only used by scorecam (how many
    masked copies go through the model at once). ``cam_pass`` runs the single-pass CAM instead
    of ``predict_with_cam(model, .)``: an inference engine passes its fast backend here.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {list(METHODS)}")
    _check_target(target)
    check_explainable(model)
    size = tuple(batch.shape[-2:])
    if method == "cam":
        result = cam_pass(batch) if cam_pass is not None else predict_with_cam(model, batch)
        raw = result.cams_abnormal if target == "abnormal" else -result.cams_abnormal
        logits, pooled = result.logits, result.pooled_features
    else:
        raw, logits, pooled = _library_raw_maps(
            model, as_model_input(model, batch), method, target, batch_size
        )
    logits = logits.float()
    return Explanation(
        maps=display_maps(raw, size).cpu().numpy(),
        raw_maps=raw.cpu().numpy(),
        probabilities=torch.sigmoid(logits).cpu().numpy(),
        logits=logits.cpu().numpy(),
        pooled_features=pooled.float(),
        method=method,
        target=target,
    )
