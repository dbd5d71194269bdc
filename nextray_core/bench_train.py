"""Training throughput on the current device: the fast path against plain fp32 eager.

Both paths run real optimizer steps (forward, backward, Adam) of the same model on synthetic
tensors, so no data and no disk are involved: the number is the model's ceiling, which the data
pipeline then has to keep up with. FLOPs per image are counted (torch's FlopCounterMode on the
meta device, so counting costs nothing) rather than assumed, which also accounts for the layers
``freeze_layers`` keeps out of the backward pass. A large bf16 matmul's TFLOP/s is the yardstick
for how much of the device the training step uses.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nextray_core.hardware import device_name
from nextray_core.model import build_model
from nextray_core.train_device import Runtime, resolve_device


def count_train_flops(arch: str, size: int, freeze_layers: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image's training step, counted on 'meta'."""
    with torch.device("meta"):
        model = build_model(arch, dropout=0.5, freeze_layers=freeze_layers)
        images = torch.empty(2, 3, size, size)  # two: batch norm needs >1 value in training
    forward = FlopCounterMode(display=False)
    with forward:
        model(images)
    step = FlopCounterMode(display=False)
    with step:
        model(images).sum().backward()
    return forward.get_total_flops() / 2, step.get_total_flops() / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    runtime: Runtime,
    *,
    arch: str,
    size: int,
    batch_size: int,
    steps: int,
    warmup: int,
    freeze_layers: int,
    compile: bool,
) -> float:
    """Median seconds per optimizer step over ``steps``, after ``warmup`` untimed steps.

    The median, not the mean, so that a busy shared machine disturbs the figure less.
    """
    torch.manual_seed(0)
    model = build_model(arch, dropout=0.5, freeze_layers=freeze_layers).to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step_model = torch.compile(model) if compile else model
    images = runtime.to_device(torch.randn(batch_size, 3, size, size))
    labels = (torch.rand(batch_size) < 0.5).float().to(runtime.device)

    def step() -> None:
        with runtime.autocast():
            logits = step_model(images).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(runtime.device)
        start = time.perf_counter()
        step()
        _sync(runtime.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_tflops(device: torch.device, n: int | None = None, repeats: int = 10) -> float:
    """Achieved TFLOP/s of an n x n x n bf16 matmul: the device's practical dense peak."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def bench_train(
    *,
    device: str = "auto",
    arch: str = "resnet152",
    size: int = 320,
    batch_size: int = 16,
    steps: int = 20,
    warmup: int = 5,
    freeze_layers: int = 148,
    compile: bool = False,
) -> dict[str, Any]:
    """Images/s of the fast path (bf16 autocast + channels-last [+ compile]) and of fp32 eager."""
    resolved = resolve_device(device)
    forward, per_image = count_train_flops(arch, size, freeze_layers)
    common = dict(arch=arch, size=size, batch_size=batch_size, steps=steps, warmup=warmup,
                  freeze_layers=freeze_layers)  # fmt: skip
    fast = time_training(Runtime(resolved, "bf16", True), compile=compile, **common)
    plain = time_training(Runtime(resolved, "fp32", False), compile=False, **common)
    results: dict[str, Any] = {
        "device": str(resolved),
        "device_name": device_name(resolved),
        "torch": torch.__version__,
        **common,
        "compile": compile,
        "forward_gflop_per_image": forward / 1e9,
        "train_gflop_per_image": per_image / 1e9,
        "fast_images_per_s": batch_size / fast,
        "fp32_images_per_s": batch_size / plain,
        "speedup": plain / fast,
    }
    peak = matmul_tflops(resolved)
    achieved = per_image * batch_size / fast / 1e12
    results |= {
        "bf16_matmul_tflops": peak,
        "fast_train_tflops": achieved,
        "share_of_matmul": achieved / peak,
    }
    return results


def format_results(r: dict[str, Any]) -> str:
    fast = "bf16 autocast + channels_last" + (" + compile" if r["compile"] else "")
    return "\n".join(
        [
            f"device: {r['device']} ({r['device_name']}), torch {r['torch']}",
            f"{r['arch']} training step, {r['size']}px, batch {r['batch_size']}, "
            f"{r['freeze_layers']} layers frozen, {r['steps']} timed steps after {r['warmup']}",
            f"counted FLOPs per image: {r['forward_gflop_per_image']:.1f} GFLOP forward, "
            f"{r['train_gflop_per_image']:.1f} GFLOP forward + backward",
            f"fast ({fast}): {r['fast_images_per_s']:.1f} images/s",
            f"plain (fp32 eager):  {r['fp32_images_per_s']:.1f} images/s",
            f"speed-up: {r['speedup']:.2f}x",
            f"bf16 matmul: {r['bf16_matmul_tflops']:.2f} TFLOP/s; the fast training step "
            f"reaches {r['fast_train_tflops']:.2f} TFLOP/s = {100 * r['share_of_matmul']:.0f}% "
            "of it",
        ]
    )
