"""``nextray index``, ``nextray inspect`` and ``nextray card``: look at data and checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from nextray_core.errors import NextRayError
from nextray_core.files import write_text_atomic
from nextray_core.options import DATA_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="build the index table of a dataset (and validate it)")
    index.add_argument(
        "--data",
        required=True,
        type=Path,
        help="MURA (the folder containing MURA-v1.1), FracAtlas, a folder with normal/ and "
        "abnormal/, or an index CSV",
    )
    index.add_argument("--kind", default="auto", choices=DATA_KINDS)
    index.add_argument("--seed", type=int, default=0, help="seed of the patient-level splits")
    index.add_argument("--out", type=Path, help="write the index table to this CSV")
    index.set_defaults(handler=run_index)

    card = sub.add_parser("card", help="verify a checkpoint and show its card")
    card.add_argument("checkpoint", type=Path)
    card.add_argument("--json", action="store_true", help="print the whole card as JSON")
    card.set_defaults(handler=run_card)

    inspect = sub.add_parser("inspect", help="check that files read as radiographs")
    inspect.add_argument("files", nargs="+", type=Path)
    inspect.set_defaults(handler=run_inspect)


def run_index(args: argparse.Namespace) -> int:
    from nextray_core.datasets import detect_dataset_kind, load_dataset

    kind = detect_dataset_kind(args.data) if args.kind == "auto" else args.kind
    index = load_dataset(kind, args.data, seed=args.seed)
    counts = index.pivot_table(
        index="region", columns=["split", "label"], values="image_path", aggfunc="count"
    ).fillna(0)
    print(
        f"{kind}: {len(index)} images, {index['study_id'].nunique()} studies, "
        f"{index['patient_id'].nunique()} patients (label 1 = abnormal)"
    )
    print(counts.astype(int).to_string())
    if args.out:
        out = write_text_atomic(args.out, index.to_csv(index=False))
        print(f"wrote {out}")
    return 0


def run_card(args: argparse.Namespace) -> int:
    from nextray_core.card_text import format_card_metrics
    from nextray_core.checkpoint import verify_checkpoint

    card = verify_checkpoint(args.checkpoint)
    if args.json:
        print(card.to_json(), end="")
        return 0
    print(f"name:          {card.name}")
    print(f"architecture:  {card.architecture} (dropout {card.dropout}), input {card.prep.size}px")
    print(f"classes:       {card.negative_class} / {card.positive_class} (positive)")
    print(f"threshold:     {card.default_threshold:g}")
    print(f"task:          {card.task}")
    print(f"intended use:  {card.intended_use}")
    files = ", ".join(card.weight_file_names)
    print(
        f"weights:       {files} ({card.weights_dtype}): sha256 matches the card and the tensors "
        f"fit a {card.architecture} (an integrity check, not a signature)"
    )
    print()
    print(format_card_metrics(card.metrics))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from nextray_core.imaging import read_radiograph

    failed = 0
    for path in args.files:
        try:
            image = read_radiograph(path, warn=False)  # the line below says it, once
        except NextRayError as error:
            print(f"{path}: ERROR {error}")
            failed += 1
            continue
        meta = image.metadata
        note = (
            "  (looks like a colour photograph, not a radiograph)" if meta["colour_photo"] else ""
        )
        print(
            f"{path}: {meta['format']} {meta['width']}x{meta['height']} "
            f"{meta['bit_depth']}-bit {meta['mode']}{note}"
        )
    return 1 if failed else 0
