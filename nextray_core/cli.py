"""The ``nextray`` command: thin subcommands over the library modules.

Errors a user can cause (``NextRayError``) are printed as one line on stderr with exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nextray_core.errors import NextRayError

COMMAND_MODULES: tuple[str, ...] = (
    "nextray_core.commands.data",
    "nextray_core.commands.dashboard",
    "nextray_core.commands.train",
    "nextray_core.commands.release",
    "nextray_core.commands.evaluate",
    "nextray_core.commands.explain",
    "nextray_core.commands.bench",
    "nextray_core.commands.explore",
)
_PLANNED = {
    "train": "train a classifier (the neXt-Ray report's recipe by default)",
    "evaluate": "evaluate checkpoint(s) on a dataset split and write a run folder",
    "predict": "probabilities for image files or folders, per image and per study",
    "explain": "class activation map overlays and trust scores for images",
    "bench-train": "training throughput benchmark: fast path vs fp32 eager",
}


def _not_yet(args: argparse.Namespace) -> int:
    raise NextRayError(f"'nextray {args.command}' is not available in this version yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextray",
        description="neXt-Ray: abnormality detection in upper-extremity radiographs "
        "(research and teaching only; not for clinical use).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for name, text in _PLANNED.items():
        if name not in sub.choices:
            sub.add_parser(name, help=f"{text} [not in this version yet]").set_defaults(
                handler=_not_yet
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except NextRayError as error:
        print(f"nextray {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nextray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
