"""The ways one checkpoint can answer "probability + CAM + pooled features" for a batch.

Every backend returns a ``CamResult`` (float32, on the CPU or the model's device) so callers
never care which one ran:

- ``torch-fp32``: the model as trained, ``explain.cam.predict_with_cam``. The reference and the
  fallback; runs anywhere, on CUDA too.
- ``torch-bf16``: a bf16, channels-last copy of the model with batch norm folded (oneDNN's bf16
  convolutions on CPUs with AVX-512 BF16 or AMX); about 1.8x fp32 on the 2-core machine.
- ``torch-mixed``: the same with the stem and layer1 kept in fp32 (see ``TorchBf16``).
- ``onnx-int8``: the same single-pass graph (features -> logit, CAM, pooled) exported to ONNX and
  statically quantised to int8 (per-channel weights, QDQ) with ONNX Runtime, calibrated on real
  radiographs that the checkpoint carries. VNNI int8 kernels make it about 4x faster than bf16.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.mkldnn
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from nextray_core.explain.cam import (
    CamResult,
    feature_maps,
    feature_stages,
    head_logits,
    predict_with_cam,
)
from nextray_core.model import output_linear

BACKENDS: tuple[str, ...] = ("onnx-int8", "torch-bf16", "torch-mixed", "torch-fp32")
# leading stages kept fp32 by torch-mixed (a ResNet's stem and layer1)
MIXED_FP32_STAGES = 5


class Backend(Protocol):
    name: str

    def run(self, batch: torch.Tensor) -> CamResult: ...


def _result(logits: torch.Tensor, cams: torch.Tensor, pooled: torch.Tensor) -> CamResult:
    logits = logits.float()
    return CamResult(
        logits=logits,
        probabilities=torch.sigmoid(logits),
        cams_abnormal=cams.float(),
        pooled_features=pooled.float(),
    )


class TorchFp32:
    """The reference: the checkpoint's own fp32 model."""

    name = "torch-fp32"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run(self, batch: torch.Tensor) -> CamResult:
        return predict_with_cam(self.model, batch)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of a ResNet with every batch norm folded into the convolution before it (fp32).

    Folding first and rounding to bf16 after means no large pre-normalisation value is ever
    rounded (a bf16 conv output of ~100 has a step of 0.5, which the subtraction of the running
    mean would turn into a large relative error). DenseNets (norm before conv) are left as they are.
    """
    model = copy.deepcopy(model).eval()
    if not isinstance(model, models.ResNet):
        return model
    model.conv1, model.bn1 = fuse_conv_bn_eval(model.conv1, model.bn1), nn.Identity()
    for block in model.modules():
        if isinstance(block, (Bottleneck, BasicBlock)):
            for conv, norm in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                if hasattr(block, conv):
                    fused = fuse_conv_bn_eval(getattr(block, conv), getattr(block, norm))
                    setattr(block, conv, fused)
                    setattr(block, norm, nn.Identity())
            if block.downsample is not None:
                block.downsample = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
    return model


class TorchBf16:
    """A batch-norm-folded, channels-last copy of the model in bf16; results come back float32.

    ``fp32_stages``: how many leading stages (``explain.cam.feature_stages``; for a ResNet
    conv1, bn1, relu, maxpool, layer1, ...) stay fp32. Why: a backbone whose batch norms were
    re-fitted on a new domain can carry channels whose signal is a small variation on a large
    offset; rounding such inputs to bf16's 8 bits erases the signal, and the deep stages amplify
    the error. Keeping the stem and layer1 (about 7% of ResNet-152's FLOPs) in fp32 fixes that.
    """

    def __init__(self, model: nn.Module, fp32_stages: int = 0) -> None:
        self.name = "torch-bf16" if fp32_stages == 0 else "torch-mixed"
        self.head = copy.deepcopy(output_linear(model)).float().cpu().eval()
        folded = fold_batch_norm(model.float().cpu())
        # oneDNN's own tensors with the weights reordered once ("prepacked"), where available:
        # eager convolutions would reorder every weight on every call (~15% at batch 1)
        self.prepacked = torch.backends.mkldnn.is_available()
        self.stages, self.dtypes = [], []
        for i, stage in enumerate(feature_stages(folded)):
            dtype = torch.float32 if i < fp32_stages else torch.bfloat16
            stage = stage.to(dtype).eval()
            if self.prepacked:
                stage = torch.utils.mkldnn.to_mkldnn(stage, dtype)
            else:
                stage = stage.to(memory_format=torch.channels_last)
            self.stages.append(stage)
            self.dtypes.append(dtype)

    def run(self, batch: torch.Tensor) -> CamResult:
        x = batch.to("cpu", torch.float32)
        with torch.inference_mode():
            if not self.prepacked:
                x = x.contiguous(memory_format=torch.channels_last)
            for stage, dtype in zip(self.stages, self.dtypes, strict=True):
                if x.dtype != dtype:
                    x = x.to_dense().to(dtype) if x.is_mkldnn else x.to(dtype)
                if self.prepacked and not x.is_mkldnn:
                    x = x.to_mkldnn()
                x = stage(x)
            maps = (x.to_dense() if x.is_mkldnn else x).float()
            pooled = torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)
            logits = self.head(pooled)[:, 0]
            cams = torch.einsum("f,bfhw->bhw", self.head.weight[0], maps)
        return _result(logits, cams, pooled)


class SinglePass(nn.Module):
    """image -> (logit, CAM, pooled features): the graph exported to ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = feature_maps(self.model, image)
        logits, pooled = head_logits(self.model, maps)
        cams = torch.einsum("f,bfhw->bhw", output_linear(self.model).weight[0], maps)
        return logits, cams, pooled


def export_onnx(model: nn.Module, size: int, path: Path) -> Path:
    """Write the single-pass graph as ONNX (batch axis dynamic); atomic."""
    tmp = path.with_name(path.name + ".tmp")
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        torch.onnx.export(
            SinglePass(copy.deepcopy(model).float().cpu().eval()),
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logit", "cam", "pooled"],
            dynamic_axes={"image": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def quantize_int8(fp32_path: Path, calibration: np.ndarray, path: Path) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"image": calibration[i : i + 1]} for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = path.with_name(path.stem + ".pre.onnx")
    tmp = path.with_name(path.name + ".tmp")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(
        str(pre),
        str(tmp),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink(missing_ok=True)
    tmp.replace(path)
    return path


class OnnxInt8:
    """An ONNX Runtime session over the int8 graph."""

    name = "onnx-int8"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting between operators: on a small shared CPU spinning threads steal the
        # cores that the dashboard or a data loader needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, batch: torch.Tensor) -> CamResult:
        image = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, cams, pooled = self.session.run(None, {"image": image})
        return _result(torch.from_numpy(logits), torch.from_numpy(cams), torch.from_numpy(pooled))


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has bf16 convolutions here (AVX-512 BF16 or AMX); else bf16 is emulated."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
