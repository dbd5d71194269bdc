"""Post-hoc probability calibration: make a probability of 0.8 mean "right 8 times in 10".

A network trained with class-weighted BCE (or simply over-fitted) gives probabilities that do
not match observed rates. Two classic fixes fitted on the validation split's logits:

- ``temperature``: ``logit / T`` (Guo et al. 2017), one parameter, keeps the ranking and the
  0.5 point; it cannot undo the prior shift that class weighting adds to the logit;
- ``platt``: ``a * logit + b`` (Platt 1999), temperature plus a shift; the default, because it
  also removes that shift.

Both are affine in the logit, so they are folded into the head's final ``Linear`` layer
(``fold_into_head``): every path that reads the logit (the engine's fp32, bf16 and int8
backends, CAM, predict, evaluate, the dashboard) then gives calibrated probabilities with no
extra code, and the maps keep their shape (they scale by ``a``). The raw head is kept beside
the weights so that a checkpoint can be released again from its raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from nextray_core.errors import ConfigError
from nextray_core.model import output_linear
from nextray_core.options import CALIBRATIONS as METHODS

RAW_HEAD_WEIGHT = "release.raw_head.weight"
RAW_HEAD_BIAS = "release.raw_head.bias"
_EPS = 1e-7


@dataclass(frozen=True)
class AffineCalibration:
    """``calibrated logit = scale * logit + shift``."""

    method: str
    scale: float = 1.0
    shift: float = 0.0

    def apply(self, probability: np.ndarray) -> np.ndarray:
        return sigmoid(self.scale * logit(probability) + self.shift)

    def to_dict(self) -> dict:
        out = {"method": self.method, "scale": self.scale, "shift": self.shift}
        if self.method == "temperature":
            out["temperature"] = 1.0 / self.scale
        return out


def logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(value: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(value, dtype=np.float64)))


def _nll(scale: float, shift: float, logits: np.ndarray, labels: np.ndarray) -> float:
    z = scale * logits + shift
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_calibration(
    probabilities: np.ndarray, labels: np.ndarray, method: str = "platt"
) -> AffineCalibration:
    """Fit ``method`` by minimising the log loss on (probability, label) pairs."""
    if method not in METHODS:
        raise ConfigError(f"unknown calibration {method!r}; choose one of {list(METHODS)}")
    if method == "none":
        return AffineCalibration("none")
    labels = np.asarray(labels, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        raise ConfigError("calibration needs validation images of both classes")
    logits = logit(probabilities)
    if method == "temperature":  # optimise log T so that T stays positive
        result = minimize(lambda v: _nll(np.exp(-v[0]), 0.0, logits, labels), x0=[0.0])
        return AffineCalibration("temperature", float(np.exp(-result.x[0])), 0.0)
    result = minimize(lambda v: _nll(np.exp(v[0]), v[1], logits, labels), x0=[0.0, 0.0])
    return AffineCalibration("platt", float(np.exp(result.x[0])), float(result.x[1]))


def raw_head(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's current weight and bias, to store as extra tensors before folding."""
    linear = output_linear(model)
    return {
        RAW_HEAD_WEIGHT: linear.weight.detach().cpu().float().clone(),
        RAW_HEAD_BIAS: linear.bias.detach().cpu().float().clone(),
    }


def restore_raw_head(model: nn.Module, extras: dict[str, torch.Tensor]) -> bool:
    """Undo an earlier fold (a checkpoint released before); True if there was one."""
    if RAW_HEAD_WEIGHT not in extras:
        return False
    linear = output_linear(model)
    with torch.no_grad():
        linear.weight.copy_(extras[RAW_HEAD_WEIGHT].to(linear.weight))
        linear.bias.copy_(extras[RAW_HEAD_BIAS].to(linear.bias))
    return True


def fold_into_head(model: nn.Module, calibration: AffineCalibration) -> None:
    """Rewrite the final Linear so that it outputs the calibrated logit."""
    linear = output_linear(model)
    with torch.no_grad():
        linear.weight.mul_(calibration.scale)
        linear.bias.mul_(calibration.scale).add_(calibration.shift)
