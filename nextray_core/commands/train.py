"""``nextray train`` and ``nextray bench-train``.

The ``train`` flags are generated from ``config.TrainConfig``'s fields (``--weight-decay`` for
``weight_decay``, ``--hflip/--no-hflip`` for booleans), with no defaults of their own: a flag
that is not given does not override the recipe or the ``--config`` file.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from nextray_core.config import TrainConfig, parse_regions
from nextray_core.files import write_text_atomic

_MULTI_GPU = (
    "Several GPUs: torchrun --standalone --nproc_per_node N -m nextray_core.cli train ... "
    "(--batch-size is per process). Several machines: --nnodes N --rdzv-backend c10d "
    "--rdzv-endpoint HOST:PORT instead of --standalone, on each; --resume needs the same "
    "number of processes."
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; the field's metadata gives help and choices."""
    group = parser.add_argument_group("training settings (defaults: the --recipe's)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default {f.default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "regions":
            kwargs["type"] = parse_regions
        elif isinstance(f.default, tuple):
            kwargs |= {"type": type(f.default[0]), "nargs": f.metadata.get("nargs", "+")}
        else:
            kwargs["type"] = type(f.default)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    given = vars(args)
    overrides = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given}
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    if "data" in overrides:
        overrides["data"] = str(Path(overrides["data"]).expanduser().resolve())
    return overrides


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a classifier (the neXt-Ray report's recipe by default)",
        description="Train a one-logit classifier; writes OUT/best and OUT/last (checkpoint "
        "folders with cards), OUT/train_log.jsonl and OUT/config.json. " + _MULTI_GPU,
    )
    train.add_argument("--out", type=Path, help="output folder of the run")
    train.add_argument("--config", type=Path, help="JSON file of settings (flags override it)")
    train.add_argument(
        "--resume", type=Path, metavar="OUT_DIR", help="continue the run in OUT_DIR exactly"
    )
    add_config_arguments(train)
    train.set_defaults(handler=run_train)

    bench = sub.add_parser(
        "bench-train",
        help="training throughput benchmark: fast path vs fp32 eager",
        description="Images/s of ResNet-152 training steps on synthetic tensors: bf16 autocast "
        "+ channels-last (+ torch.compile) against plain fp32 eager; on CUDA also the share "
        "of a large bf16 matmul's TFLOP/s the step reaches.",
    )
    bench.add_argument("--device", default="auto")
    bench.add_argument("--arch", default="resnet152")
    bench.add_argument("--size", type=int, default=320)
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument(
        "--freeze-layers",
        type=int,
        default=TrainConfig.freeze_layers,
        help="as in training (default: the report's 148); 0 trains the whole network",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    bench.add_argument("--json", type=Path, help="also write the results to this JSON file")
    bench.set_defaults(handler=run_bench)


def run_train(args: argparse.Namespace) -> int:
    from nextray_core.config import read_config_file, resolve_config, resume_config
    from nextray_core.errors import ConfigError
    from nextray_core.train import CONFIG_FILE, fit

    overrides = overrides_from_args(args)
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ConfigError("--resume OUT_DIR continues in OUT_DIR; leave out --out")
        if args.config is not None:
            raise ConfigError("--resume reads the run's own config.json; leave out --config")
        saved = args.resume / CONFIG_FILE
        if not saved.is_file():
            raise ConfigError(f"{args.resume} is not a training run folder ({saved} is missing)")
        config = resume_config(read_config_file(saved), overrides)
        out = args.resume
    else:
        if args.out is None:
            raise ConfigError("pass --out FOLDER for the run (or --resume OUT_DIR)")
        config = resolve_config(overrides, args.config)
        out = args.out
    result = fit(config, out, resume=args.resume is not None)
    if os.environ.get("RANK", "0") == "0":  # one process releases, one line is printed
        from nextray_core.release import release_training_run

        print(f"best epoch {result.best_epoch}: {result.best_dir}; last: {result.last_dir}")
        release_training_run(result.best_dir, config)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from nextray_core.bench_train import bench_train, format_results

    results = bench_train(
        device=args.device,
        arch=args.arch,
        size=args.size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        freeze_layers=args.freeze_layers,
        compile=args.compile,
    )
    print(format_results(results))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0
