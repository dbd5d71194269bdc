"""``nextray release``: the release step alone, for a checkpoint trained before it existed.

``nextray train`` runs it at the end of every run (on OUT/best); this command runs it on any
checkpoint with the dataset it was trained on (the train split for the OOD statistics, the
validation split for everything else; the test split is never read).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nextray_core.options import CALIBRATIONS, DATA_KINDS, THRESHOLD_POLICIES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "release",
        help="choose threshold, calibration and OOD statistics on the validation split",
        description="Complete a checkpoint: name its task and classes from the data, fit "
        "post-hoc calibration and choose the default threshold on the validation split, fit "
        "the OOD statistics on training images, store the engine's calibration sample, and "
        "write validation metrics with intervals and every validation prediction. `nextray "
        "train` does this by itself; run it for older checkpoints.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="the dataset it was trained on")
    parser.add_argument("--kind", default="auto", choices=DATA_KINDS)
    parser.add_argument(
        "--data-seed",
        type=int,
        help="seed of the dataset's split (default: the card's training.data_seed, else 0)",
    )
    parser.add_argument("--out", type=Path, help="write here instead of in place")
    parser.add_argument("--threshold-policy", default="youden", choices=THRESHOLD_POLICIES)
    parser.add_argument("--threshold-target", type=float, default=0.9,
                        help="sensitivity/specificity the threshold must reach")  # fmt: skip
    parser.add_argument("--calibration", default="platt", choices=CALIBRATIONS)
    parser.add_argument("--ood-images", type=int, default=2000,
                        help="training images the OOD statistics are fitted on")  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run_release)


def run_release(args: argparse.Namespace) -> int:
    from nextray_core.checkpoint import read_card
    from nextray_core.datasets import dataset_task, detect_dataset_kind, load_dataset
    from nextray_core.predict import resolve_device
    from nextray_core.release import ReleasePolicy, release

    card = read_card(args.checkpoint)
    seed = args.data_seed
    if seed is None:
        seed = int(card.training.get("data_seed", 0))
    kind = detect_dataset_kind(args.data) if args.kind == "auto" else args.kind
    index = load_dataset(kind, args.data, seed=seed)
    regions = card.training.get("regions") or []
    if regions:
        index = index[index["region"].isin(regions)]
    policy = ReleasePolicy(
        threshold=args.threshold_policy,
        target=args.threshold_target,
        calibration=args.calibration,
        ood_images=args.ood_images,
    )
    release(
        args.checkpoint, index, dataset_task(kind, args.data), out=args.out, policy=policy,
        device=resolve_device(args.device),
    )  # fmt: skip
    return 0
