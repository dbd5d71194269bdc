"""``nextray explain``: heat-map overlays, probabilities and trust scores for image files.

Writes OUT/<stem>_overlay.png per image (original size; a stem seen twice gets a short hash of
its path) and OUT/explanations.csv with one row per input file, failures included (status
'error' and the reason; the reason is also printed on stderr). Every file is written to a
temporary name and renamed, so a crash never leaves half a file. Exit code: 0 if at least one
image was explained, 1 if every file failed, 2 for a usage error (bad checkpoint, no files).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from nextray_core.commands.evaluate import add_backend_argument, say_backend
from nextray_core.errors import NextRayError
from nextray_core.files import write_text_atomic
from nextray_core.options import METHODS, TARGETS

CSV_NAME = "explanations.csv"
_DESCRIPTION = """\
Heat-map overlays (original image size) and probabilities for image files or folders.

Writes OUT/<stem>_overlay.png per image and OUT/explanations.csv with one row per file,
failures included (status 'error' with the reason, also printed on stderr). With --faithfulness
each map gets a score in [-1, 1] (higher = more faithful); checkpoints with OOD statistics add
ood_distance and ood_flag; flags and note say what the input checks (blank, inverted, colour
photo, ...) and the OOD score found. Exit code: 0 if at least one image was explained, 1 if
every file failed, 2 for a usage error (bad checkpoint, no files).
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain",
        help="class activation map overlays and trust scores for images",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILES_OR_FOLDERS")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="folder for overlays and CSV")
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="default: the checkpoint's map method (measured on its validation split), else cam",
    )
    parser.add_argument(
        "--target",
        default="abnormal",
        choices=TARGETS,
        help="whose evidence: abnormal = the checkpoint's positive class (e.g. 'fractured' for "
        "the demo), normal = its negative class",
    )
    parser.add_argument("--colormap", default="jet", help="a matplotlib colormap name")
    parser.add_argument("--opacity", type=float, default=0.4, help="heat-map opacity at its peak")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--faithfulness",
        action="store_true",
        help="also score each map's faithfulness (10 extra forward passes per batch)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_backend_argument(parser)
    parser.set_defaults(handler=run_explain)


def _overlay_name(path: Path, used: set[str]) -> str:
    name = f"{path.stem}_overlay.png"
    if name in used:
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"{path.stem}-{digest}_overlay.png"
    used.add(name)
    return name


def _save_png(rgb, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)


def _read(path: Path):
    """(radiograph, its sanity notes); a refusal (blank, too small) raises like a bad file."""
    from nextray_core.imaging import read_radiograph
    from nextray_core.sanity import check_radiograph

    image = read_radiograph(path, warn=False)
    return image, list(check_radiograph(image))


def run_explain(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from tqdm import tqdm

    from nextray_core.engine import load_engine
    from nextray_core.engine.answer import map_method
    from nextray_core.explain import faithfulness, overlay
    from nextray_core.explain.overlay import colormap_lut
    from nextray_core.predict import find_image_files, resolve_device
    from nextray_core.sanity import codes, excluded, messages, ood_note
    from nextray_core.transforms import model_input

    colormap_lut(args.colormap)  # an unknown colormap fails before any work
    if not 0.0 <= args.opacity <= 1.0 or args.batch_size < 1:
        raise NextRayError("--opacity must be within 0..1 and --batch-size at least 1")
    files = find_image_files(args.inputs)  # the same walk as predict; none found: exit 2
    device = resolve_device(args.device)
    engine = load_engine(
        args.checkpoint, device=device, backend=args.backend, expected_images=len(files)
    )
    say_backend(args.checkpoint, engine)
    model, card, ood = engine.model, engine.card, engine.ood
    args.method = args.method or map_method(card)
    if engine.ood_error:
        print(f"OOD check off: {engine.ood_error}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)

    rows, used = [], set()
    progress = tqdm(total=len(files), unit="img", desc="explain", file=sys.stderr, disable=None)
    for start in range(0, len(files), args.batch_size):
        images, tensors = [], []
        for path in files[start : start + args.batch_size]:
            try:
                image, note = _read(path)
            except NextRayError as error:
                print(f"skipped: {error}", file=sys.stderr)
                rows.append({"path": str(path), "status": "error", "error": str(error)})
                continue
            images.append((path, image, note))
            # uint8 first, like predict, evaluate and the dashboard: the same input, the same answer
            tensors.append(model_input(image.to_uint8(), card.prep))
        if images:
            batch = torch.stack(tensors)
            result = engine.explain(batch, args.method, args.target)
            faith = (
                faithfulness(model, batch, result.maps, target=args.target)
                if args.faithfulness
                else None
            )
            distances = engine.ood_score(batch, result)
            for i, (path, image, note) in enumerate(images):
                name = _overlay_name(path, used)
                rgb = overlay(
                    image.pixels, result.maps[i], colormap=args.colormap, opacity=args.opacity
                )
                _save_png(rgb, args.out / name)
                row = {
                    "path": str(path),
                    "status": "ok",
                    "error": "",
                    "probability": float(result.probabilities[i]),
                    "method": args.method,
                    "target": args.target,
                    "overlay": name,
                    "width": image.metadata["width"],
                    "height": image.metadata["height"],
                    "flags": codes(excluded(note)),
                    "note": messages(note),
                }
                if faith is not None:
                    row["faithfulness"] = float(faith[i])
                if distances is not None:
                    row["ood_distance"] = float(distances[i])
                    row["ood_flag"] = bool(distances[i] > ood.threshold)
                    if row["ood_flag"]:
                        extra = ood_note(path.name, float(distances[i]), ood.threshold)
                        row["flags"] = codes(excluded([*note, extra]))
                        row["note"] = messages([*note, extra])
                rows.append(row)
        progress.update(len(files[start : start + args.batch_size]))
    progress.close()

    frame = pd.DataFrame(rows)
    for column in ("width", "height"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")  # stay integers beside error rows
    order = {str(p): i for i, p in enumerate(files)}
    frame = frame.sort_values("path", key=lambda s: s.map(order), kind="stable")
    csv = write_text_atomic(args.out / CSV_NAME, frame.to_csv(index=False))
    explained = int((frame["status"] == "ok").sum())
    print(f"explained {explained} of {len(files)} image(s) with {args.method}; wrote {csv}")
    return 0 if explained else 1
