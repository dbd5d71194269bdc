"""``nextray dashboard``: start the Streamlit app, optionally on a given run and checkpoint."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nextray_core.errors import NextRayError

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dashboard", help="start the Streamlit dashboard")
    parser.add_argument("--run", type=Path, help="an evaluation run folder to open")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder to load")
    parser.add_argument("--port", type=int, default=8501)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not APP.is_file():
        raise NextRayError(
            f"the dashboard is not beside the package ({APP} is missing); "
            "run it from a clone of the neXt-Ray repository (pip install -e .)"
        )
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port)]
    extra: list[str] = []
    for flag, value in (("--run", args.run), ("--checkpoint", args.checkpoint)):
        if value is not None:
            if not value.exists():
                raise NextRayError(f"{flag} {value}: no such file or folder")
            extra += [flag, str(value.resolve())]
    if extra:
        command += ["--", *extra]
    # Streamlit reads .streamlit/config.toml from the working directory: the repository root.
    return subprocess.call(command, cwd=APP.parents[1])
