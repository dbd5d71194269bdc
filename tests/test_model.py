from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nextray_core.errors import ConfigError
from nextray_core.model import (
    build_model,
    describe_freeze,
    feature_layer,
    freeze_first_layers,
    output_linear,
)


def test_resnet152_forward_gives_one_logit_per_image(resnet152):
    with torch.no_grad():
        out = resnet152(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    assert output_linear(resnet152).in_features == 2048
    assert feature_layer(resnet152) is resnet152.layer4


def test_head_is_dropout_then_linear_and_dropout_acts_only_in_training(resnet152):
    head = resnet152.fc
    assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(resnet152(x), resnet152(x))


def test_freezing_148_layers_matches_the_reports_parameter_count(resnet152):
    model = build_model("resnet152", freeze_layers=148)
    params = list(model.parameters())
    assert [p.requires_grad for p in params[:148]] == [False] * 148
    assert all(p.requires_grad for p in params[148:])
    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert names[0] == "conv1.weight"
    assert names[-1].startswith("layer3.4.")  # inside the fifth bottleneck of layer3
    assert "148/467" in describe_freeze(model)
    assert model.fc[1].weight.requires_grad


def test_freezing_more_layers_than_exist_is_refused(resnet152):
    with pytest.raises(ConfigError, match=r"can freeze 0\.\.467"):
        freeze_first_layers(resnet152, 1000)


@pytest.mark.parametrize("arch, features", [("resnet101", 2048), ("densenet169", 1664)])
def test_baselines_share_the_builder(arch, features):
    model = build_model(arch, dropout=0.2).eval()
    assert output_linear(model).in_features == features
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1)


def test_unknown_architecture_and_bad_dropout_are_refused():
    with pytest.raises(ConfigError, match="resnet152"):
        build_model("vgg16")
    with pytest.raises(ConfigError, match="dropout"):
        build_model("resnet152", dropout=1.5)


def test_local_state_dict_initialises_the_backbone_and_ignores_its_head(tmp_path, resnet152):
    state = {k: v.clone() for k, v in resnet152.state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"] = torch.zeros(1000, 2048)  # an ImageNet-shaped head must be ignored
    path = tmp_path / "backbone.safetensors"
    save_file(state, str(path))
    model = build_model("resnet152", init=path)
    assert torch.equal(model.conv1.weight, resnet152.conv1.weight)
    assert torch.equal(model.layer4[2].conv3.weight, resnet152.layer4[2].conv3.weight)


def test_state_dict_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ConfigError, match="torchvision's key names"):
        build_model("resnet152", init=path)
    with pytest.raises(ConfigError, match="no such file"):
        build_model("resnet152", init=tmp_path / "absent.safetensors")


def test_imagenet_init_without_internet_says_what_to_do():
    with pytest.raises(ConfigError, match="--init none"):
        build_model("resnet152", init="imagenet")
