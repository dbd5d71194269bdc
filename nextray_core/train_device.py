"""Where training steps run: the device, the precision and this process's place under torchrun.

One process per GPU (or per CPU agent with gloo); ``setup_distributed`` joins torchrun's
process group from its environment, so the same code runs alone, on one box
(``--standalone``) and across machines (``--rdzv-backend c10d``).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nextray_core.hardware import resolve_device

__all__ = ["Runtime", "any_rank", "resolve_device", "setup_distributed"]


@dataclass(frozen=True)
class Runtime:
    """Where and how steps run: device, precision, memory format, this process's rank."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    show_progress: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision != "bf16":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group (env://) when there is one.

    NCCL on CUDA, gloo on the CPU. Without torchrun this is a single process of rank 0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", init_method="env://")
    return rank, world, resolved


def any_rank(flags: list[bool], runtime: Runtime) -> list[bool]:
    """Each flag, true if it is true on any process (so that all ranks stop together)."""
    if runtime.world_size == 1:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]
