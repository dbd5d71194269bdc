"""``nextray evaluate`` (checkpoints on a dataset split -> a run folder) and ``nextray predict``.

Every option is checked before the slow work (loading weights, scoring images), and the run is
written atomically at the end, so a mistake costs seconds and never leaves a half-written run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextray_core.errors import ConfigError, DatasetError
from nextray_core.files import write_text_atomic
from nextray_core.options import BACKEND_CHOICES, COMBINE_RULES, DATA_KINDS


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        help="inference path: auto = the fastest one that passes the accuracy guard against "
        "fp32 on this machine (default); torch-fp32 = the model exactly as trained",
    )


def load_members(args: argparse.Namespace, device, n_images: int | None = None) -> list:
    """(engine, card) per --checkpoint, each engine on --backend; says which path answers.

    ``n_images``: how many images the job has, if known (a small job under ``auto`` is fp32).
    """
    from nextray_core.checkpoint import read_card
    from nextray_core.engine import load_engine
    from nextray_core.predict import ensemble_classes

    ensemble_classes([read_card(path) for path in args.checkpoint])  # before any weights
    members = []
    for path in args.checkpoint:
        engine = load_engine(path, device=device, backend=args.backend, expected_images=n_images)
        say_backend(path, engine)
        members.append((engine, engine.card))
    return members


def say_backend(path, engine) -> None:
    """Which inference path answers for ``path`` (on stderr: stdout is for results)."""
    reason = f" ({engine.reason})" if engine.reason else ""
    print(f"{path}: {engine.backend_name}{reason}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate checkpoint(s) on a dataset split and write a run folder",
        description="Score every image of a split, then write OUT/ with predictions.csv, "
        "run.json, metrics.json (image and study level, 95% study-bootstrap intervals), "
        "curves.json, report.md and, for MURA, the official scorer's scorer_predictions.csv.",
    )
    evaluate.add_argument("--checkpoint", nargs="+", required=True, type=Path, metavar="C",
                          help="checkpoint folder(s); several form an ensemble")  # fmt: skip
    evaluate.add_argument("--data", required=True, type=Path,
                          help="dataset: the folder containing MURA-v1.1, FracAtlas, "
                          "normal/abnormal folders or an index CSV")  # fmt: skip
    evaluate.add_argument("--kind", default="auto", choices=DATA_KINDS)
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--out", required=True, type=Path, help="run folder to create")
    evaluate.add_argument("--combine", default="mean", choices=COMBINE_RULES,
                          help="ensemble rule: mean probability or majority vote")  # fmt: skip
    evaluate.add_argument("--regions", default="", help="comma-separated regions (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--bootstrap", type=int, default=1000,
                          help="bootstrap resamples of studies (0: no intervals)")  # fmt: skip
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.add_argument("--data-seed", type=int, default=None,
                          help="seed of the dataset's train/val/test split (default: the one "
                          "recorded in the checkpoint's card, else 0)")  # fmt: skip
    evaluate.add_argument("--threshold", type=float,
                          help="threshold for the metrics (default: the card's)")  # fmt: skip
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--workers", type=int, default=0, help="data-loading processes")
    add_backend_argument(evaluate)
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing run")
    evaluate.add_argument("--no-features", dest="features", action="store_false",
                          help="do not store the images' pooled features (PCA-50, float16) in "
                          "features.npz, which the dashboard's Run map draws")  # fmt: skip
    evaluate.add_argument("--copy-images", action="store_true",
                          help="copy the evaluated images into OUT/images (FracAtlas: and "
                          "their boxes into OUT/boxes.csv) so the run opens anywhere (if the "
                          "data licence allows it: not MURA)")  # fmt: skip
    evaluate.set_defaults(handler=run_evaluate)

    predict = sub.add_parser(
        "predict",
        help="probabilities for image files or folders, per image and per study",
        description="Score image files and folders (walked for .png .jpg .jpeg .dcm .dicom); "
        "views in one folder form one study, whose probability is the mean of its views'. "
        "Put the files before --checkpoint.",
    )
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_FOLDER")
    predict.add_argument("--checkpoint", nargs="+", required=True, type=Path, metavar="C")
    predict.add_argument("--threshold", type=float, help="default: the checkpoint card's")
    predict.add_argument("--csv", type=Path, help="write the per-image table to this CSV")
    predict.add_argument("--combine", default="mean", choices=COMBINE_RULES)
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--keep-flagged",
        action="store_true",
        help="count flagged views (OOD, inverted, colour photo, low contrast, ...) in their "
        "study's verdict; by default they are scored and shown but left out of it",
    )
    add_backend_argument(predict)
    predict.set_defaults(handler=run_predict)


def _images_root(data: Path, predictions) -> Path:
    """The dataset folder (or, for an index CSV, the images' common folder)."""
    import os

    if data.is_dir():
        return data
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in predictions["image_path"]]))


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if getattr(args, "bootstrap", 0) < 0:
        raise ConfigError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if getattr(args, "workers", 0) < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")


def _data_seed(args: argparse.Namespace, cards: list) -> int:
    """--data-seed, else the split seed the checkpoints were trained with (they must agree)."""
    if args.data_seed is not None:
        return args.data_seed
    recorded = {card.training.get("data_seed") for card in cards} - {None}
    if len(recorded) > 1:
        raise ConfigError(
            f"the checkpoints were trained on splits made with different seeds {sorted(recorded)}; "
            "pass --data-seed to choose the split to evaluate"
        )
    return int(recorded.pop()) if recorded else 0


def _select(index, args: argparse.Namespace):
    """The rows of the requested split and regions, or a ConfigError listing the choices."""
    from nextray_core.config import parse_regions

    splits = sorted(index["split"].unique())
    if args.split not in splits:
        raise ConfigError(f"unknown split {args.split!r}; {args.data} has {', '.join(splits)}")
    rows = index[index["split"] == args.split]
    regions = parse_regions(args.regions)
    available = sorted(rows["region"].unique())
    unknown = sorted(set(regions) - set(available))
    if unknown:
        raise ConfigError(
            f"unknown region(s) {', '.join(unknown)}; split {args.split!r} has "
            f"{', '.join(available)}"
        )
    if regions:
        rows = rows[rows["region"].isin(regions)]
    if rows.empty:
        raise DatasetError(f"split {args.split!r} of {args.data} holds no images")
    return rows.reset_index(drop=True), regions


def run_evaluate(args: argparse.Namespace) -> int:
    from nextray_core import report, runs
    from nextray_core.checkpoint import read_card
    from nextray_core.datasets import detect_dataset_kind, load_dataset
    from nextray_core.predict import ensemble_threshold, predict_index, resolve_device, study_table

    _check_numbers(args)
    kind = detect_dataset_kind(args.data) if args.kind == "auto" else args.kind
    if args.copy_images and kind == "mura":
        raise ConfigError(
            "--copy-images refused for MURA: its licence forbids redistributing the images. "
            "Share the run without them; others point it at their own MURA copy."
        )
    out = runs.check_run_target(args.out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    cards = [read_card(path) for path in args.checkpoint]
    data_seed = _data_seed(args, cards)
    rows, regions = _select(load_dataset(kind, args.data, seed=data_seed), args)

    # the same small-job rule as predict and explain: ~100 images are answered in fp32 at once
    # instead of paying seconds (or a minute, the first time) for a fast path they cannot repay
    members = load_members(args, device, n_images=len(rows))
    predictions = predict_index(
        members,
        rows,
        batch_size=args.batch_size,
        device=device,
        combine=args.combine,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        keep_features=args.features,
    )
    # out of attrs at once: pandas deep-copies attrs into every frame derived from this one
    features = predictions.attrs.pop("features", None)
    ood_distance = predictions.attrs.pop("ood_distance", None)
    default = ensemble_threshold([card for _, card in members], args.combine)
    threshold = default if args.threshold is None else args.threshold
    evaluation = runs.evaluate_predictions(
        predictions, threshold, n_boot=args.bootstrap, seed=args.seed
    )
    meta = runs.build_meta(
        checkpoints=[
            (path, card) for path, (_, card) in zip(args.checkpoint, members, strict=True)
        ],
        predictions=predictions,
        dataset_kind=kind,
        data_root=args.data,
        split=args.split,
        combine=args.combine,
        default_threshold=default,
        batch_size=args.batch_size,
        regions=regions,
        device=str(device),
        extra={
            "data_seed": data_seed,
            "backends": [engine.backend_name for engine, _ in members],
        },
    )
    tables = evaluation.tables
    files = {
        runs.METRICS_FILE: runs.dump_json(
            evaluation.to_json("card" if args.threshold is None else "--threshold")
        ),
        runs.CURVES_FILE: runs.dump_json(evaluation.curves),
        runs.REPORT_FILE: report.render_report(
            meta,
            tables["image"],
            tables["study"],
            threshold=threshold,
            bootstrap=evaluation.bootstrap,
            calibration=evaluation.calibration,
        ),
    }
    if kind == "mura":
        files[runs.SCORER_FILE] = runs.scorer_csv(study_table(predictions), threshold)
    if kind == "fracatlas" and args.copy_images:  # the copied images keep their ground truth
        from nextray_core.datasets import load_fracture_boxes
        from nextray_core.viewer import RUN_BOXES_FILE, boxes_for_run

        shipped = boxes_for_run(predictions, load_fracture_boxes(args.data))
        files[RUN_BOXES_FILE] = shipped.to_csv(index=False)
    runs.write_run(
        out,
        predictions,
        meta,
        files=files,
        overwrite=args.overwrite,
        images_root=_images_root(args.data, predictions) if args.copy_images else None,
    )
    if features is not None:
        from nextray_core.run_map import fit_projection, write_features

        write_features(out, fit_projection(features, ood_distance=ood_distance))
        del features

    counts = meta["counts"]
    print(
        f"{kind} split {args.split!r}: {counts['images']} images, {counts['studies']} studies, "
        f"threshold {threshold:g}, 95% intervals from {args.bootstrap} study resamples"
    )
    print("\nStudy level\n" + report.table2(tables["study"], "study"))
    print("\nImage level\n" + report.table2(tables["image"], "image"))
    print(f"\nrun written to {out} (report: {out / runs.REPORT_FILE})")
    return 0


def notes_section(images) -> str:
    """Every image's error and notes in full (never cut: each names its fix), or ''."""
    lines = [
        f"  {path}: {' | '.join(part for part in (error, warning) if part)}"
        for path, error, warning in zip(
            images["image_path"], images["error"], images["warning"], strict=True
        )
        if error or warning
    ]
    return "\nNotes\n" + "\n".join(lines) if lines else ""


def run_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from nextray_core.checkpoint import read_card
    from nextray_core.predict import (
        ensemble_classes,
        ensemble_threshold,
        find_image_files,
        predict_files,
        resolve_device,
        study_table,
    )

    _check_numbers(args)
    device = resolve_device(args.device)
    for path in args.checkpoint:
        read_card(path)  # a wrong path fails before any weights are read
    files = find_image_files(args.files)
    members = load_members(args, device, n_images=len(files))
    images = predict_files(
        members, files, batch_size=args.batch_size, device=device, combine=args.combine
    )
    threshold = (
        ensemble_threshold([card for _, card in members], args.combine)
        if args.threshold is None
        else args.threshold
    )
    for engine, _ in members:
        if engine.ood is None:
            print(f"{engine.card.name}: no OOD statistics, OOD check off", file=sys.stderr)
    studies = study_table(images, keep_flagged=args.keep_flagged)
    negative, positive = ensemble_classes([card for _, card in members])

    def verdict(probability: pd.Series, unscored: str = "unreadable") -> pd.Series:
        return probability.map(
            lambda p: unscored if pd.isna(p) else positive if p >= threshold else negative
        )

    images["verdict"] = verdict(images["probability"])
    images["counted"] = images["probability"].notna() & (
        args.keep_flagged or images["flags"].eq("")
    )
    studies["verdict"] = verdict(studies["probability"], "no usable view").where(
        studies["n_left_out"].gt(0) | studies["probability"].notna(), "unreadable"
    )
    failed = int((images["error"] != "").sum())
    if args.csv:
        table = images.merge(
            studies[["study_id", "probability", "verdict", "n_views", "left_out"]].rename(
                columns={
                    "probability": "study_probability",
                    "verdict": "study_verdict",
                    "n_views": "study_views_used",
                    "left_out": "study_left_out",
                }
            ),
            on="study_id",
            how="left",
        )
        table.insert(table.columns.get_loc("probability"), "threshold", threshold)
        write_text_atomic(args.csv, table.to_csv(index=False))
        print(f"wrote {args.csv}: {len(images)} images in {len(studies)} studies")
    else:
        shown = images.assign(
            image=images["image_path"],
            probability=images["probability"].round(3),
        )
        print(f"Images (threshold {threshold:g}; {positive} when probability >= threshold)")
        print(shown[["image", "probability", "verdict", "flags"]].to_string(index=False))
        print(notes_section(images))
        rule = "all views" if args.keep_flagged else "flagged views left out (--keep-flagged)"
        print(f"\nStudies (probability = mean of the views; {rule})")
        shown = studies.assign(probability=studies["probability"].round(3))
        columns = ["study_id", "region", "n_views", "n_left_out", "left_out", "probability"]
        print(shown[[*columns, "verdict"]].to_string(index=False))
    if failed:
        print(f"{failed} file(s) could not be read; see the error column", file=sys.stderr)
    return 1 if failed else 0
