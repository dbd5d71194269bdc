"""The ways one checkpoint can answer "probability + CAM + pooled features" for a batch.

Every backend returns a ``CamResult`` (float32, on the CPU or the model's device) so callers
never care which one ran:

- ``torch-fp32``: the model as trained, ``explain.cam.predict_with_cam``. The reference and the
  fallback; runs anywhere, on CUDA too.
- ``torch-bf16``: a bf16, channels-last copy of the model with batch norm folded (oneDNN's bf16
  convolutions on CPUs with AVX-512 BF16 or AMX), compiled by TorchInductor.
- ``torch-mixed``: the same with the stem and layer1 kept in fp32 (see ``TorchBf16``).
- ``onnx-int8``: the same single-pass graph (features -> logit, CAM, pooled) exported to ONNX and
  statically quantised to int8 (per-channel weights, QDQ) with ONNX Runtime, calibrated on real
  radiographs that the checkpoint carries.

Measured speeds are in docs/benchmarks.md (``nextray bench --backend NAME``).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from nextray_core.explain.cam import CamResult, feature_stages, head_outputs, predict_with_cam
from nextray_core.model import output_linear

# ONNX Runtime (1.29+, Linux and macOS too) writes a device id under ~/.cache/Microsoft and queues
# usage events for Microsoft unless this is set before it starts; neXt-Ray sends nothing. Set
# here, before any of our code imports onnxruntime (a user's explicit setting is kept).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# leading stages kept fp32 by torch-mixed (a ResNet's stem and layer1)
MIXED_FP32_STAGES = 5


class Backend(Protocol):
    name: str

    def run(self, batch: torch.Tensor) -> CamResult: ...


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


class StagedNet(nn.Module):
    """image -> (logit, CAM, pooled) through feature stages of mixed dtypes, as one module.

    Each stage runs in its own dtype (fp32 or bf16), channels-last; the head, the CAM and the
    pooling are fp32 (``explain.cam.head_outputs``). One module, so that ``torch.compile`` and
    the ONNX exporter see the whole graph.
    """

    def __init__(self, stages: list[nn.Module], dtypes: list[torch.dtype], head: nn.Linear):
        super().__init__()
        self.stages = nn.ModuleList(
            stage.to(dtype).to(memory_format=torch.channels_last).eval()
            for stage, dtype in zip(stages, dtypes, strict=True)
        )
        self.dtypes = dtypes
        self.head = head.float().eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.contiguous(memory_format=torch.channels_last)
        for stage, dtype in zip(self.stages, self.dtypes, strict=True):
            x = stage(x.to(dtype))
        return head_outputs(self.head, x)


_COMPILE_LOCK = threading.Lock()


class TorchBf16:
    """A batch-norm-folded, channels-last copy of the model in bf16, compiled by TorchInductor
    (weights frozen and prepacked) when a C++ compiler is there; results come back float32.

    ``fp32_stages``: how many leading stages (``explain.cam.feature_stages``; for a ResNet
    conv1, bn1, relu, maxpool, layer1, ...) stay fp32. Why: a backbone whose batch norms were
    re-fitted on a new domain can carry channels whose signal is a small variation on a large
    offset; rounding such inputs to bf16's 8 bits erases the signal, and the deep stages amplify
    the error. Keeping the stem and layer1 (about 7% of ResNet-152's FLOPs) in fp32 fixes that.

    Compiled code is cached in ``cache_dir`` (the engine passes a folder named after the
    checkpoint's hash), so a second start loads it in seconds. Each batch size compiles once;
    a smaller batch is padded up to a size already compiled rather than compiled again.
    """

    def __init__(
        self,
        model: nn.Module,
        fp32_stages: int = 0,
        *,
        size: int | None = None,
        cache_dir: Path | None = None,
        compile: bool = True,
    ) -> None:
        self.name = "torch-bf16" if fp32_stages == 0 else "torch-mixed"
        folded = fold_batch_norm(model.float().cpu())
        stages = feature_stages(folded)
        dtypes = [torch.float32 if i < fp32_stages else torch.bfloat16 for i in range(len(stages))]
        self.net = StagedNet(stages, dtypes, copy.deepcopy(output_linear(model)))
        self.forward = self.net
        self.compiled_sizes: list[int] = []
        self.note = "eager (not compiled)"
        self._lock = threading.Lock()
        if compile and size is not None:
            self._compile(size, cache_dir)

    def _compile(self, size: int, cache_dir: Path | None) -> None:
        # torch warns "No CUDA runtime is found" on every CPU-only compile: noise for our users
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        try:
            with _COMPILE_LOCK, _inductor_cache(cache_dir):
                compiled = torch.compile(self.net, dynamic=False)
                with torch.no_grad(), torch._inductor.config.patch(freezing=True):
                    compiled(torch.zeros(1, 3, size, size))  # compile now, not at a user's click
        except Exception as error:  # no C++ compiler, unsupported CPU...: eager is still right
            self.note = f"eager (torch.compile failed: {type(error).__name__})"
            return
        self.forward, self.compiled_sizes = compiled, [1]
        self.cache_dir = cache_dir
        self.note = "compiled (TorchInductor, frozen weights)"

    def run(self, batch: torch.Tensor) -> CamResult:
        x = batch.to("cpu", torch.float32)
        count = len(x)
        if self.compiled_sizes and count not in self.compiled_sizes:
            larger = [s for s in self.compiled_sizes if s > count]
            if larger:  # pad: a recompile costs seconds, a few extra images milliseconds
                x = torch.cat([x, x[-1:].expand(min(larger) - count, *x.shape[1:])])
        with self._lock, torch.no_grad(), torch._inductor.config.patch(freezing=True):
            if self.compiled_sizes and len(x) not in self.compiled_sizes:
                with _inductor_cache(self.cache_dir):
                    logits, cams, pooled = self.forward(x)
                self.compiled_sizes.append(len(x))
            else:
                logits, cams, pooled = self.forward(x)
        return CamResult.from_outputs(logits[:count], cams[:count], pooled[:count])


class _inductor_cache:
    """Point TorchInductor's on-disk cache at ``folder`` while compiling (process-global)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder, self.before = folder, None

    def __enter__(self) -> None:
        if self.folder is not None:
            self.before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder)

    def __exit__(self, *exc: object) -> None:
        if self.folder is not None:
            if self.before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.before


def export_onnx(model: nn.Module, size: int, path: Path) -> Path:
    """Write the single-pass graph (fp32 ``StagedNet``) as ONNX, batch axis dynamic; atomic."""
    tmp = path.with_name(path.name + ".tmp")
    example = torch.zeros(1, 3, size, size)
    model = copy.deepcopy(model).float().cpu().eval()
    stages = feature_stages(model)
    net = StagedNet(stages, [torch.float32] * len(stages), copy.deepcopy(output_linear(model)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        torch.onnx.export(
            net,
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

        ort.disable_telemetry_events()  # the Windows (ETW) provider ignores the variable
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
        return CamResult.from_outputs(*(torch.from_numpy(out) for out in (logits, cams, pooled)))


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
