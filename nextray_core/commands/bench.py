"""``nextray bench``: CPU inference benchmark, the fast path against eager fp32 + pytorch-grad-cam.

See ``nextray_core.bench_infer`` for what is measured and how.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nextray_core.commands.evaluate import add_backend_argument
from nextray_core.errors import CheckpointError, ConfigError
from nextray_core.files import write_text_atomic

RUN_SUBFOLDER = "run"
DEFAULT_CHECKPOINT = Path("checkpoints/demo")
_DESCRIPTION = """\
In one run: ms per image for probability + map at batch 1 and images/s at batch B, for the
engine's fast path and for eager fp32 + pytorch-grad-cam (GradCAM), their ratios, the floor
(the model's FLOPs at the GFLOP/s of a large fp32 / bf16 matmul measured here) and an accuracy
guard of the fast path against fp32 on real radiographs: the images of --run (default: the
checkpoint's 'run' subfolder if it exists), of --images, or else the checkpoint's calibration
images.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="CPU inference benchmark: probability + map, fast path vs eager fp32",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: %(default)s"
    )
    parser.add_argument("--run", type=Path, help="evaluation run whose images the guard uses")
    parser.add_argument("--images", type=Path, help="folder of images for the guard instead")
    add_backend_argument(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="for images/s (default 8)")
    parser.add_argument(
        "--guard-images", type=int, default=64, help="at most this many (default 64)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch and ONNX Runtime threads (default: torch's own)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    parser.add_argument("--cache-dir", type=Path, help="engine cache (default $NEXTRAY_CACHE)")
    parser.set_defaults(handler=run_bench)


def default_run(checkpoint: Path) -> Path | None:
    """The checkpoint's own evaluation run, if it ships one."""
    folder = checkpoint / RUN_SUBFOLDER
    return folder if folder.is_dir() else None


def run_bench(args: argparse.Namespace) -> int:
    from nextray_core.bench_infer import bench_infer
    from nextray_core.runs import dump_json

    if not args.checkpoint.exists():
        raise CheckpointError(
            f"no checkpoint at {args.checkpoint}; pass --checkpoint FOLDER (a folder with "
            "card.json and model.safetensors, such as OUT/best of nextray train)"
        )
    run = args.run
    if run is None and args.images is None:
        run = default_run(args.checkpoint)
    if args.json is not None and not args.json.parent.is_dir():
        raise ConfigError(f"no folder {args.json.parent} for --json; create it first")
    result = bench_infer(
        args.checkpoint,
        run=run,
        images=args.images,
        backend=args.backend,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        guard_count=args.guard_images,
        cache_dir=args.cache_dir,
        threads=args.threads,
    )
    print(result.format())
    if args.json is not None:
        write_text_atomic(args.json, dump_json(result.to_dict()))
        print(f"\nresults written to {args.json}")
    return 0
