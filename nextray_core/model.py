"""Build the classifier: torchvision ResNet-152 (and the baselines) with a one-logit head.

The head is ``Dropout(p) -> Linear(features, 1)``; the sigmoid lives outside the module (the
loss uses logits, predict applies it). Keeping torchvision's module tree unchanged means
pytorch-grad-cam, torchvision weights and our class activation maps all see the usual names.

Freezing "the first N layers" follows the neXt-Ray report, which froze 148: a *layer* here is
one parameter tensor in ``model.parameters()`` order (the PyTorch idiom
``for p in list(model.parameters())[:148]: p.requires_grad = False``). For ResNet-152 the first
148 tensors are the stem (conv1, bn1), layer1, layer2 and the first four bottlenecks of layer3
plus the first conv of the fifth (``conv1.weight .. layer3.4.conv1.weight``; ``describe_freeze``
reports the exact boundary).
Frozen batch-norm layers keep their affine parameters fixed but still update running
statistics in training mode, as in the report.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from nextray_core.errors import CheckpointError, ConfigError
from nextray_core.options import ARCHITECTURES

_BUILDERS = {
    "resnet152": (models.resnet152, models.ResNet152_Weights.DEFAULT),
    "resnet101": (models.resnet101, models.ResNet101_Weights.DEFAULT),
    "densenet169": (models.densenet169, models.DenseNet169_Weights.DEFAULT),
}


def build_model(
    arch: str = "resnet152",
    *,
    init: str | Path = "none",
    dropout: float = 0.5,
    freeze_layers: int = 0,
) -> nn.Module:
    """A classifier with one output logit.

    ``init``: ``"none"`` (random, torchvision's initialisation), ``"imagenet"`` (torchvision's
    weights; downloads them, so only for users with internet) or the path of a local state dict
    (``.safetensors``, or a ``.pt``/``.pth`` read with ``weights_only=True``) whose keys follow
    torchvision's names, or a neXt-Ray checkpoint folder (fine-tuning a trained model, e.g. at a
    larger size; its hash is verified); the classifier head, if any, is ignored.
    """
    if arch not in _BUILDERS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    builder, imagenet = _BUILDERS[arch]
    if str(init) == "imagenet":
        try:
            model = builder(weights=imagenet)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise ConfigError(
                f"could not download torchvision's ImageNet weights for {arch} ({error}); "
                "connect to the internet once (torchvision caches them), or train without them: "
                "--init none --freeze-layers 0 (random init, whole network), or --init PATH (a "
                "state dict with torchvision's key names, or a neXt-Ray checkpoint folder)"
            ) from error
    elif str(init) == "none":
        model = builder(weights=None)
    else:
        model = builder(weights=None)
        _load_backbone(model, Path(init))
    _replace_head(model, dropout)
    freeze_first_layers(model, freeze_layers)
    return model


def build_skeleton(arch: str = "resnet152", *, dropout: float = 0.5) -> nn.Module:
    """The classifier's module tree on the meta device: names and shapes, no storage.

    For loading a checkpoint: torchvision draws every weight at random when it builds a
    network (about a second for ResNet-152's 60 M parameters on two cores), work that the
    weights loaded right after would throw away. Load into it with
    ``model.load_state_dict(state, assign=True)``.
    """
    with torch.device("meta"):
        return build_model(arch, init="none", dropout=dropout)


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry's shape (works on a skeleton)."""
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def _replace_head(model: nn.Module, dropout: float) -> None:
    name = "classifier" if isinstance(model, models.DenseNet) else "fc"
    linear = getattr(model, name)
    setattr(model, name, nn.Sequential(nn.Dropout(dropout), nn.Linear(linear.in_features, 1)))


def head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the classifier head ('fc.' or 'classifier.')."""
    return "classifier." if isinstance(model, models.DenseNet) else "fc."


def _load_backbone(model: nn.Module, path: Path) -> None:
    if path.is_dir():
        from nextray_core.checkpoint import EXTRA_PREFIX, load_tensors  # imports this module

        _, tensors = load_tensors(path)
        state = {k: v.float() for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    elif path.is_file():
        state = read_state_dict(path)
    else:
        raise ConfigError(
            f"--init {path}: no such file or folder; give 'none', 'imagenet', a state dict "
            "or a checkpoint folder"
        )
    backbone = {k: v for k, v in state.items() if not k.startswith(head_prefix(model))}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix(model))]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{path} does not fit {type(model).__name__}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]}); it must use torchvision's key names"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} could not be read as a plain state dict ({error}); save it with "
            "safetensors or torch.save(model.state_dict())"
        ) from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def freeze_first_layers(model: nn.Module, count: int) -> None:
    """Freeze the first ``count`` parameter tensors (the report's definition of a layer)."""
    params = list(model.parameters())
    if not 0 <= count <= len(params):
        raise ConfigError(f"can freeze 0..{len(params)} layers of this model, not {count}")
    for index, param in enumerate(params):
        param.requires_grad_(index >= count)


def describe_freeze(model: nn.Module) -> str:
    """Which parameter tensors are frozen, e.g. for a training log."""
    names = [name for name, p in model.named_parameters() if not p.requires_grad]
    total = sum(1 for _ in model.parameters())
    if not names:
        return f"nothing frozen ({total} parameter tensors trainable)"
    return f"{len(names)}/{total} parameter tensors frozen: {names[0]} .. {names[-1]}"


def feature_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block, whose output the class activation maps weight."""
    if isinstance(model, models.DenseNet):
        return model.features
    return model.layer4


def output_linear(model: nn.Module) -> nn.Linear:
    """The final Linear(features, 1) of the head."""
    head = model.classifier if isinstance(model, models.DenseNet) else model.fc
    return head[-1]
