"""``nextray label-errors`` (and the other commands that explore a finished run).

They read a run folder and never write into the user's data: results go where ``--out`` says,
or, for the caches the dashboard reads (``run-features``, ``trust``), into their own named files
in the run folder, replaced atomically and only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextray_core.commands.evaluate import add_backend_argument, say_backend
from nextray_core.errors import ConfigError
from nextray_core.files import write_text_atomic
from nextray_core.options import FAITHFULNESS_BASELINES, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    errors = sub.add_parser(
        "label-errors",
        help="rank a run's studies by how likely their label is wrong (confident learning)",
        description="Score every labelled study of RUN by how confidently the model disagrees "
        "with its label (confident learning on the run's out-of-sample probabilities) and list "
        "them most suspicious first. --simulate measures the ranking on a copy with a share of "
        "labels flipped at random (precision at k of the flipped studies).",
    )
    errors.add_argument("run", type=Path, metavar="RUN", help="run folder (nextray evaluate)")
    errors.add_argument("--out", type=Path, help="write the whole ranking to this CSV")
    errors.add_argument("--top", type=int, default=20, help="studies to print (default 20)")
    errors.add_argument("--simulate", type=float, metavar="SHARE",
                        help="flip this share of study labels at random and report precision "
                        "at k (k = the number flipped)")  # fmt: skip
    errors.add_argument("--seeds", type=int, default=5, help="repeats of --simulate")
    errors.set_defaults(handler=run_label_errors)

    features = sub.add_parser(
        "run-features",
        help="store a run's image features (for the dashboard's Run map) in RUN/features.npz",
        description="Re-read the run's images with the checkpoint that scored it and store "
        "their pooled features as a PCA-50 float16 projection (plus OOD distances) in "
        "RUN/features.npz. New runs get it from 'nextray evaluate'; this is for older runs.",
    )
    add_run_and_scorer(features)
    features.add_argument("--batch-size", type=int, default=16)
    features.add_argument("--overwrite", action="store_true", help="replace features.npz")
    add_backend_argument(features)
    features.set_defaults(handler=run_run_features)

    trust = sub.add_parser(
        "trust",
        help="score how far a run's maps can be trusted, per region (RUN/trust.json)",
        description="With the checkpoint that scored RUN: localisation of its maps against the "
        "dataset's boxes (pointing game, energy inside, beside a uniform map's scores) on every "
        "positive image with boxes, and faithfulness (removal curves; 0 = a random map) on a "
        "seeded sample per region. Writes RUN/trust.json and RUN/trust_images.csv for the "
        "dashboard's Trust page. Maps and scores come from the fp32 model.",
    )
    add_run_and_scorer(trust)
    trust.add_argument("--method", choices=METHODS,
                       help="map method (default: the checkpoint card's)")  # fmt: skip
    trust.add_argument("--per-region", type=int, default=20,
                       help="images per region for faithfulness (10 forward passes each; "
                       "default 20, 0 skips it)")  # fmt: skip
    trust.add_argument("--baseline", choices=FAITHFULNESS_BASELINES, default="blur",
                       help="what removed pixels become (default: a blurred copy)")  # fmt: skip
    trust.add_argument("--seed", type=int, default=0)
    trust.add_argument("--batch-size", type=int, default=8)
    trust.add_argument("--overwrite", action="store_true", help="replace trust.json")
    trust.set_defaults(handler=run_trust)

    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run (metrics, curves, cases with maps)",
        description="One HTML file that opens offline: per-region metrics with bootstrap "
        "intervals at --threshold, ROC curves, confusion matrices, calibration and, per "
        "outcome, the most confident cases with the model's map (from the run's checkpoint).",
    )
    add_run_and_scorer(report, "for the maps")
    report.add_argument("--out", type=Path, required=True, help="the .html file to write")
    report.add_argument("--threshold", type=float, help="default: the run's (its card's)")
    report.add_argument("--cases", type=int, default=2,
                        help="images per outcome (FP, FN, TP, TN) to show; 0: none")  # fmt: skip
    report.add_argument("--bootstrap", type=int, default=1000, help="study resamples")
    add_backend_argument(report)
    report.set_defaults(handler=run_report)


def add_run_and_scorer(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """RUN, and the checkpoint (and device) that re-reads its images: the run's own unless
    --checkpoint names another folder with the same weights (``run_checkpoint``)."""
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder (nextray evaluate)")
    own = "default: the run's own (run.json's, or the folder holding the run, if its weights match)"
    parser.add_argument("--checkpoint", type=Path, help=f"{purpose} ({own})" if purpose else own)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run_label_errors(args: argparse.Namespace) -> int:
    from nextray_core.label_errors import flip_experiment, rank_label_errors
    from nextray_core.runs import read_run

    if args.top < 0:
        raise ConfigError(f"--top must be 0 or more, got {args.top}")
    if args.simulate is not None and not 0.0 < args.simulate < 1.0:
        raise ConfigError(f"--simulate must be a share between 0 and 1, got {args.simulate}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    run = read_run(args.run)
    ranked = rank_label_errors(run.predictions)
    negative, positive = run.class_names
    flagged = int(ranked["flagged"].sum())
    low, high = ranked.attrs["thresholds"]
    print(
        f"{len(ranked)} labelled studies; {flagged} flagged (the model is confident of the "
        f"other class). Class thresholds: {negative} {low:.3f}, {positive} {high:.3f}"
    )
    if args.top:
        shown = ranked.head(args.top).round({"probability": 3, "self_confidence": 3, "margin": 3})
        print(shown.to_string(index=False))
    if args.out:
        write_text_atomic(args.out, ranked.to_csv(index=False))
        print(f"ranking written to {args.out}", file=sys.stderr)
    if args.simulate is not None:
        results = [
            flip_experiment(run.predictions, args.simulate, seed=seed) for seed in range(args.seeds)
        ]
        values = [r["precision_at_k"] for r in results]
        mean = sum(values) / len(values)
        print(
            f"\nflipping {results[0]['flipped']} of {results[0]['studies']} study labels at "
            f"random ({args.seeds} seeds): precision at k={results[0]['k']} "
            f"{mean:.3f} (min {min(values):.3f}, max {max(values):.3f}); chance "
            f"{results[0]['chance']:.3f}"
        )
    return 0


def run_checkpoint(run, given: Path | None) -> Path:
    """The checkpoint that scored ``run``: ``given`` if its weights match, else run.json's path."""
    from nextray_core.checkpoint import read_card

    entries = run.meta.get("checkpoints") or []
    wanted = run.scorers
    # a shipped run sits inside its checkpoint (checkpoints/demo/run) wherever it was cloned
    recorded = [Path(e["path"]) for e in entries if e.get("path")]
    candidates = [given] if given else [*recorded, run.path.resolve().parent]
    for path in candidates:
        if (path / "card.json").is_file() and read_card(path).weights_sha256 in wanted:
            return path
    if given:
        raise ConfigError(
            f"{given} did not score this run (its weights differ from run.json's); pass the "
            "checkpoint that did"
        )
    raise ConfigError(
        f"the checkpoint that scored {run.path} is not where run.json says; pass --checkpoint"
    )


def run_run_features(args: argparse.Namespace) -> int:
    from nextray_core.engine import load_engine
    from nextray_core.predict import resolve_device
    from nextray_core.run_map import FEATURES_FILE, compute_run_features, write_features
    from nextray_core.runs import read_run

    run = read_run(args.run)
    if (run.path / FEATURES_FILE).exists() and not args.overwrite:
        raise ConfigError(f"{run.path / FEATURES_FILE} exists; pass --overwrite to replace it")
    checkpoint = run_checkpoint(run, args.checkpoint)
    device = resolve_device(args.device)
    engine = load_engine(
        checkpoint, device=device, backend=args.backend, expected_images=len(run.predictions)
    )
    say_backend(checkpoint, engine)
    stored = compute_run_features(
        engine, run.predictions, batch_size=args.batch_size, device=device
    )
    path = write_features(run.path, stored)
    print(
        f"{path}: {stored.projection.shape[0]} images x {stored.projection.shape[1]} components "
        f"({stored.explained.sum():.0%} of the variance)"
    )
    return 0


def run_trust(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nextray_core.engine import load_engine
    from nextray_core.predict import resolve_device
    from nextray_core.run_trust import TRUST_FILE, compute_run_trust, write_run_trust
    from nextray_core.runs import read_run
    from nextray_core.viewer import run_boxes

    if args.per_region < 0 or args.batch_size < 1:
        raise ConfigError("--per-region must be 0 or more and --batch-size at least 1")
    run = read_run(args.run)
    if (run.path / TRUST_FILE).exists() and not args.overwrite:
        raise ConfigError(f"{run.path / TRUST_FILE} exists; pass --overwrite to replace it")
    checkpoint = run_checkpoint(run, args.checkpoint)
    engine = load_engine(checkpoint, device=resolve_device(args.device), backend="torch-fp32")
    boxes, source = run_boxes(run.path, run.meta)
    print(
        f"boxes: {source}" if boxes else f"no boxes ({source}): faithfulness only", file=sys.stderr
    )
    with tqdm(desc="trust", unit="image", file=sys.stderr) as bar:

        def progress(done: int, total: int, part: str) -> None:
            bar.total = total
            bar.set_postfix_str(part)
            bar.update(done - bar.n)

        trust = compute_run_trust(
            engine, run, boxes, method=args.method, per_region=args.per_region,
            baseline=args.baseline, seed=args.seed, batch_size=args.batch_size,
            boxes_source=source, progress=progress,
        )  # fmt: skip
    path = write_run_trust(run.path, trust)
    if skipped := trust.summary["unreadable_images"]:
        print(f"{len(skipped)} image(s) could not be read and were left out, e.g. {skipped[0]}",
              file=sys.stderr)  # fmt: skip
    print(f"maps: {trust.summary['method']} at {trust.summary['input_size']} px")
    for part in ("localisation", "faithfulness"):
        table = trust.table(part)
        print(f"\n{part}:\n{table.round(3).to_string()}" if len(table) else f"\n{part}: not scored")
    print(f"\nwritten to {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from nextray_core.engine import load_engine
    from nextray_core.html_report import chosen_cases, render_html_report
    from nextray_core.predict import resolve_device
    from nextray_core.runs import read_run

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.cases < 0 or args.bootstrap < 0:
        raise ConfigError("--cases and --bootstrap must be 0 or more")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {args.out} should end in .html")
    run = read_run(args.run)
    threshold = run.default_threshold if args.threshold is None else args.threshold
    engine, note = None, ""
    if args.cases:
        try:
            checkpoint = run_checkpoint(run, args.checkpoint)
        except ConfigError as error:
            if args.checkpoint:
                raise
            note = f"Cases are shown without maps: {error}"
        else:
            engine = load_engine(checkpoint, device=resolve_device(args.device),
                                 backend=args.backend, expected_images=4 * args.cases)  # fmt: skip
            say_backend(checkpoint, engine)
    cases = chosen_cases(run, threshold, args.cases, engine) if args.cases else []
    text = render_html_report(run, threshold, cases=cases, n_boot=args.bootstrap, note=note)
    write_text_atomic(args.out, text)
    print(f"report written to {args.out} ({len(text) / 1e6:.1f} MB, {len(cases)} cases)")
    return 0
